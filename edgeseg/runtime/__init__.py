"""The device-side runtime: numpy, OpenCV and ONNX Runtime (or TensorRT) only, never PyTorch."""
