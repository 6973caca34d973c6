"""potwatch as an lmms-eval model (docs/lmms-eval.md): lmms-eval's video tasks answered from one capped,
streaming pass per video. An optional face: only lmms-eval imports it, through the `lmms_eval.models`
entry point (manifest.py), and it runs only where `bash setup.sh --lmms-eval` installed lmms-eval."""
