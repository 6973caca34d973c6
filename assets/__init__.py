"""Package data: the trained `tiny` checkpoint (assets/tiny). The demo video and screenshots beside it
belong to the checkout, not to the installed package."""
