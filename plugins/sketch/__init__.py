"""Matrix-Sketching compensation: Frequent Directions over the original filters of pruned layers."""
