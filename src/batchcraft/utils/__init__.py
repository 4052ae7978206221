"""Small shared helpers: timing and machine limits, atomic I/O, progress display."""
