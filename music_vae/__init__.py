"""The modules behind data_loader.py and music_generator.py, one job each (README: "How the
code is laid out"). Importing the package imports none of them."""
