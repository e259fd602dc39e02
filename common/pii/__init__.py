"""PII found and replaced by one engine (Presidio, spaCy, our financial recognizers, name lists): the serving gate
in front of the model and the scrub of a bank's training rows both use it."""
