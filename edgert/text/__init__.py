"""Text in and out: the tokenizer, the chat formats (Gemma 3, Gemma 4), and the chat
sessions and replies built on them."""
