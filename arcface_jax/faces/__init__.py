"""Using a trained model on photos: detect and align faces, embed them, enrol, identify, verify."""
