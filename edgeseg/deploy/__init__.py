"""Writers for the serving engines users already run (a Triton model repository, DeepStream nvinfer
configs) and a Triton server on this machine. Uses compile and runtime; nothing imports it."""
