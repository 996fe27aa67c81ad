"""Stand-in: translation is the identity (Base/Python/slicer/i18n.py: tr, translate)."""


def tr(text):
    return text


def translate(context, text):
    return text
