"""Channel criteria that need only weights: filter norms and MFP's filter distances."""
