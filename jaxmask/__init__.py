"""jaxmask: masked sequence models in pure JAX whose numbers match Keras exactly."""
