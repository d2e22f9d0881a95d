"""Code the services share, in two halves: ``shared.kit`` (the HTTP service kit every service is built from) and
``shared.core`` (images, the preprocessing contract and the ONNX runner, for training and serving alike). Beside
them, data: the embedded sample (``sample_data/``) and the pretrained bundle (``pretrained_bundle/``)."""
