"""The language model and the SAE: the catalogue, the local store, loading and reading residuals, chat templates, SAE training, the embedder. Imports only the data layer below it."""
