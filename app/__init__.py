"""The two faces: the command line (cli.py, watch.py) and the web UI (ui/)."""
