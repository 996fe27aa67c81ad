"""Stand-in for Slicer's parameterNodeWrapper: typed parameters on the node, and GUI connections by Slicer's rules.

``connectGui(ui)`` behaves as ``Base/Python/slicer/parameterNodeWrapper/wrapper.py`` (v5.8.1, ``_connectGui``
lines 241-253 and ``_connectParametersToGui`` 190-213): every widget in ``ui`` whose ``SlicerParameterName``
property is set is connected; a name that is not a parameter raises ValueError (``_checkParamName``); each
(widget class, parameter type) pair gets the first connector of ``guiConnectors.py`` whose ``canRepresent``
accepts it, and ``create`` may still refuse. No connector: RuntimeError. Then the parameter's value is written
to the widget, and the widget's changes are written back to the parameter.

The rules below are written from ``guiConnectors.py`` v5.8.1 (line numbers there); 5.12.3 differs only where
noted. Widget classes are the .ui class names, compared exactly, as Slicer compares ``type(widget)``.
"""

import enum
import pathlib
import typing

__all__ = ["parameterNodeWrapper", "Choice", "Minimum", "Maximum", "WithinRange", "Default", "CONNECTOR_RULES",
           "SLICER_VERSION"]

# which Slicer's connectGui to model: 5.8.1's ``_connectGui`` returns nothing (wrapper.py@v5.8.1 l. 241-253, the
# last line is ``_connectParametersToGui(...)`` without ``return``), so ``disconnectGui(None)`` does nothing
# there; from 5.10.0 it returns the GUI's tag (wrapper.py@v5.10.0 l. 253). Tests set it to [5, 8] for 5.8.
SLICER_VERSION = [5, 10]


class Choice(object):
    """validators.Choice: the only values a parameter may take (and what a QComboBox lists)."""

    def __init__(self, choices):
        self.choices = list(choices)


class Minimum(object):
    def __init__(self, value):
        self.value = value


class Maximum(object):
    def __init__(self, value):
        self.value = value


class WithinRange(object):
    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum


class Default(object):
    def __init__(self, value):
        self.value = value


def _split(datatype):
    """util.splitAnnotations: (the type, its Annotated extras)."""
    if typing.get_origin(datatype) is typing.Annotated:
        args = typing.get_args(datatype)
        return args[0], list(args[1:])
    return datatype, []


def _first(annotations, kind):
    return next((a for a in annotations if isinstance(a, kind)), None)


def _bounded(annotations):
    return (_first(annotations, WithinRange) is not None
            or (_first(annotations, Minimum) is not None and _first(annotations, Maximum) is not None))


def _is_node_type(datatype):
    """util.isNodeOrUnionOfNodes: a vtkMRMLNode subclass, or a Union of them (None allowed)."""
    import slicer

    kind = _split(datatype)[0]
    if isinstance(kind, type):
        return issubclass(kind, slicer.vtkMRMLNode)
    if typing.get_origin(kind) is typing.Union:
        return all(a is type(None) or (isinstance(a, type) and issubclass(a, slicer.vtkMRMLNode))
                   for a in (_split(a)[0] for a in typing.get_args(kind)))
    return False


def _combo_needs_choice(widget, datatype):
    choice = _first(_split(datatype)[1], Choice)
    if choice is None:  # guiConnectors.py:362-368
        raise RuntimeError("ComboBoxToStringableConnector requires the Choice annotation to be used.")
    return _ChoiceConnector(widget, choice.choices)


def _slider_needs_bounds(message):
    def create(widget, datatype):
        if widget.className in ("QSlider", "ctkSliderWidget") and not _bounded(_split(datatype)[1]):
            raise RuntimeError(message)
        return _ValueConnector(widget, "value")
    return create


# (connector, widget classes, accepts the unannotated type, create(widget, datatype) -> connector)
CONNECTOR_RULES = (
    ("QCheckBoxToBoolConnector", ("QCheckBox", "ctkCheckBox"), lambda t: t is bool,  # :156-186
     lambda w, d: _ValueConnector(w, "checked")),
    ("QCheckablePushButtonToBoolConnector", ("QPushButton",), lambda t: t is bool,  # :189-222
     lambda w, d: _ValueConnector(w, "checked")),
    ("QSliderOrSpinBoxToIntConnector", ("QSlider", "QSpinBox"), lambda t: t is int,  # :225-286
     _slider_needs_bounds("Cannot have a connection to QSlider where the int type is unbounded.")),
    ("QDoubleSpinBoxCtkSliderWidgetToFloatConnector",  # :289-352 (5.12: int too)
     ("QDoubleSpinBox", "ctkSliderWidget", "qMRMLSliderWidget", "ctkDoubleSlider", "ctkDoubleSpinBox", "qMRMLSpinBox"),
     lambda t: t is float,
     _slider_needs_bounds("Cannot have a connection to ctkSliderWidget where the float types is unbounded.")),
    ("QComboBoxToStringableConnector", ("QComboBox", "ctkComboBox"), lambda t: t in (int, float, str, bool),
     _combo_needs_choice),  # :355-400
    ("QComboBoxToEnumConnector", ("QComboBox", "ctkComboBox"),  # :403-449
     lambda t: isinstance(t, type) and issubclass(t, enum.Enum), lambda w, d: _ChoiceConnector(w, list(_split(d)[0]))),
    ("QLineEditToStrConnector", ("QLineEdit",), lambda t: t is str, lambda w, d: _ValueConnector(w, "text")),  # :452
    ("QLabelToStrConnector", ("QLabel",), lambda t: t is str, lambda w, d: _ValueConnector(w, "text")),  # :483
    ("QTextEditPlainTextToStrConnector", ("QTextEdit",), lambda t: t is str,  # :516
     lambda w, d: _ValueConnector(w, "text")),
    ("ctkPathLineEditToPathConnector", ("ctkPathLineEdit",),  # :605
     lambda t: t in (pathlib.Path, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePath, pathlib.PurePosixPath,
                     pathlib.PureWindowsPath), lambda w, d: _ValueConnector(w, "currentPath")),
    ("qMRMLNodeComboBoxToNodeConnector", ("qMRMLNodeComboBox",), None, lambda w, d: _NodeConnector(w)),  # :677
)


def create_gui_connector(widget, datatype):
    """guiConnectors.createGuiConnector (:124-139): the first rule that can represent the pair."""
    kind = _split(datatype)[0]
    for _, classes, accepts, create in CONNECTOR_RULES:
        if widget.className not in classes:
            continue
        if (accepts is None and _is_node_type(datatype)) or (accepts is not None and accepts(kind)):
            return create(widget, datatype)
    raise RuntimeError("Unable to create GUI connector from datatype '%s' to widget type '%s'."
                       % (datatype, widget.className))


class _ValueConnector(object):
    def __init__(self, widget, attribute):
        self.widget, self.attribute = widget, attribute

    def write(self, value):
        setattr(self.widget, self.attribute, value)

    def read(self):
        return getattr(self.widget, self.attribute)

    def on_changed(self, callback):
        pass  # the widget doubles do not emit property-change signals; the module sets these itself


class _ChoiceConnector(object):
    """Clears the combo box and fills it with the choices (guiConnectors.py:374-381)."""

    def __init__(self, widget, choices):
        self.widget, self.choices = widget, list(choices)
        widget.clear()
        for c in self.choices:
            widget.addItem(c.name if isinstance(c, enum.Enum) else str(c))

    def write(self, value):
        if value not in self.choices:  # :393-399
            raise ValueError("Unable to find value %s in choices %s" % (value, self.choices))
        self.widget.setCurrentIndex(self.choices.index(value))

    def read(self):
        return self.choices[self.widget.currentIndex]

    def on_changed(self, callback):
        self.widget.connect("currentIndexChanged(int)", lambda *a: callback())


class _NodeConnector(object):
    def __init__(self, widget):
        self.widget = widget

    def write(self, value):
        self.widget.setCurrentNode(value)

    def read(self):
        return self.widget.currentNode()

    def on_changed(self, callback):
        self.widget.connect("currentNodeChanged(vtkMRMLNode*)", lambda *a: callback())


def parameterNodeWrapper(cls):
    annotations = dict(getattr(cls, "__annotations__", {}))
    defaults = {}
    for key, datatype in annotations.items():
        default = getattr(cls, key, None)
        choice = _first(_split(datatype)[1], Choice)
        if choice is not None and default is None and choice.choices:
            default = choice.choices[0]
        defaults[key] = default

    class Wrapped(object):
        allParameters = annotations

        def __init__(self, node):
            object.__setattr__(self, "parameterNode", node)
            object.__setattr__(self, "_guis", {})
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
            for connectors in self._guis.values():  # the node's Modified event updates every GUI
                if key in connectors:
                    connectors[key].write(value)

        def connectGui(self, gui):
            widgets = {}
            for widget in vars(gui).values():  # not a QWidget: its attributes, as _connectGui does
                name = widget.property("SlicerParameterName") if hasattr(widget, "property") else None
                if name:
                    widgets[name] = widget
            for name in widgets:  # _checkParamName, before any connection
                if name not in annotations:
                    raise ValueError("Cannot find a param with the given name: %s" % name)
            connectors = {name: create_gui_connector(w, annotations[name]) for name, w in widgets.items()}
            for name, connector in connectors.items():
                connector.write(getattr(self, name))
                connector.on_changed(lambda name=name, c=connector: setattr(self.parameterNode, "lrs_" + name,
                                                                          c.read()))
            tag = len(self._guis) + 1
            self._guis[tag] = connectors
            return tag if tuple(SLICER_VERSION) >= (5, 10) else None

        def disconnectGui(self, tag):
            self._guis.pop(tag, None)

    Wrapped.__name__ = cls.__name__
    return Wrapped
