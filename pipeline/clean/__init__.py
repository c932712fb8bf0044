"""The clean stage (`make clean`): ``clean(cfg)`` in ``stage.py`` removes only what the
pipeline made. Standard library only, so it runs before `make setup`."""
