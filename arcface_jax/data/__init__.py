"""Data: sources (RecordIO, folders, TFDS, synthetic), the input pipeline, alignment, `.bin` sets."""
