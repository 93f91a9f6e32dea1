"""What the robot runs: numpy and ONNX Runtime only (never torch, tqdm, sklearn)."""
