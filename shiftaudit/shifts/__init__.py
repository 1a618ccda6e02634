"""Which shifts an audit evaluates (``sets``) and how a shift is applied to an image (``modes``: circular, crop,
sub-pixel)."""
