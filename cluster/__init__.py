"""`potwatch cluster`: many streams on many machines, on Ray (the `cluster` extra).

Stream hosts (host.py) are Ray actors that each load the model once and hold up to their byte budget of
`StreamSession`s; a directory actor (directory.py) places each new stream on the host with most room and
records where it lives; a stateless Ray Serve FastAPI front door (front_door.py) takes HTTP/JSON and calls
the stream's host directly. docs/cluster.md has the design and its figures.

Importing this package imports nothing heavy; the modules that need Ray import it themselves, and only
`potwatch cluster` (and programs using the cluster) import those."""
