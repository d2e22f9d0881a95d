"""Code shared by the three services: labels, the preprocessing contract, image decoding,
dataset discovery, API schemas and the error type."""
