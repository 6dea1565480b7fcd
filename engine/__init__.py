"""The vision-language engine: image intake, the model worker and its backends."""
