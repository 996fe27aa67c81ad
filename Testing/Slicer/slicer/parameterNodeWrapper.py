"""Stand-in for Slicer's parameterNodeWrapper: typed attributes stored on the wrapped node."""


def parameterNodeWrapper(cls):
    defaults = {k: getattr(cls, k, None) for k in getattr(cls, "__annotations__", {})}

    class Wrapped(object):
        def __init__(self, node):
            object.__setattr__(self, "parameterNode", node)
            for key, value in defaults.items():
                if not hasattr(node, "lrs_" + key):
                    setattr(node, "lrs_" + key, value)

        def __getattr__(self, key):
            if key in defaults:
                return getattr(self.parameterNode, "lrs_" + key)
            raise AttributeError(key)

        def __setattr__(self, key, value):
            if key not in defaults:
                raise AttributeError("%s has no parameter %s" % (cls.__name__, key))
            setattr(self.parameterNode, "lrs_" + key, value)

        def connectGui(self, ui):
            object.__setattr__(self, "gui", ui)
            return "gui-tag"

        def disconnectGui(self, tag):
            assert tag == "gui-tag"
            object.__setattr__(self, "gui", None)

    Wrapped.__name__ = cls.__name__
    return Wrapped
