"""The ``imgclust`` command line: the layer above ``flows/`` (the library never imports it)."""
