"""`python -m yolo8` is the `yolo8` command."""
from .cli import main

main()
