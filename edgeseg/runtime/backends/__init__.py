"""Inference backends and the Predictor over them: ONNX Runtime, OpenVINO and TensorRT (with CUDA),
the load-time unpool rewrite for ONNX Runtime's x86 kernels, FP16 conversion, the precision choice
and engine metadata. Uses only the runtime's shared modules (meta, images, masks) below it."""
