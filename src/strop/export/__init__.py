"""Export a trained model for other runtimes: GGUF files (llama.cpp, Ollama, LM Studio) written
by strop's own converter on top of the ``gguf`` package (``gguf_writer.write_gguf``)."""
