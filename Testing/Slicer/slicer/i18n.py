"""Stand-in: translation is the identity."""


def tr(text):
    return text
