"""The multimodal-LLM annotator: prompt, providers, requests, pacing, Batch and cost estimates.

Everything that needs the ``openai`` SDK or the tokenizer lives here, apart from the light
schema and store every annotator (the offline one included) shares.
"""
