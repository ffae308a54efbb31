"""Accuracy on labelled data (Oxford-IIIT Pet layout folders): confusion matrices, mIoU and pet IoU
for any Predictor. Runs on the device too: no PyTorch, nothing from the compile side."""
