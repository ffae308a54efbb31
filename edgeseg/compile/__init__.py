"""The compile side, run on a workstation: the PyTorch model and its checkpoints, ONNX export and its
checks, FP16 conversion for TensorRT 11, INT8 quantization and calibration, TensorRT engine builds.
Needs PyTorch (export) and onnx; the device runtime (edgeseg.runtime) never imports this package."""
