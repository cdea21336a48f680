"""YOLOv3 (Darknet-53, three scales): model, loss and decoding."""
