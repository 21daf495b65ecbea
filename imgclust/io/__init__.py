"""Where images, manifests, features and models live: the store and its layout, sources, locks."""
