"""The int16 crop cache: ``build`` cuts every crop once, ``read`` serves them as verified views."""
