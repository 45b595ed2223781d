"""The model: graph, ONNX intake and normalisation, sample inputs, shape checks."""
