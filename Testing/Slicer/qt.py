"""Stand-in for Slicer's PythonQt ``qt`` module: only what LowResSeg.py uses (see README.md)."""


class Qt(object):
    ItemIsUserCheckable = 16
    Checked = 2
    Unchecked = 0


class QMessageBox(object):
    Ok = 0x00000400  # QMessageBox::StandardButton
    Cancel = 0x00400000


class QTimer(object):
    """A timer the test fires by hand (``fire``); ``connect("timeout()", slot)`` as in PythonQt.
    ``QTimer.singleShot(ms, callable)`` runs the callable from the event loop, never at once
    (``slicer.app.processEvents()`` here runs the due ones, after laying out the views)."""

    pending = []  # single shots not yet run

    @staticmethod
    def singleShot(ms, slot):
        QTimer.pending.append(slot)

    @staticmethod
    def run_due():
        due, QTimer.pending[:] = list(QTimer.pending), []
        for slot in due:
            slot()

    def __init__(self):
        self.active, self.interval, self._slots = False, 0, []

    def setInterval(self, ms):
        self.interval = ms

    def connect(self, signal, slot):
        assert signal == "timeout()", signal
        self._slots.append(slot)

    def start(self):
        self.active = True

    def stop(self):
        self.active = False

    def fire(self):
        if self.active:
            for slot in list(self._slots):
                slot()


class QListWidgetItem(object):
    def __init__(self, text):
        self._text, self._flags, self._check = text, 0, Qt.Unchecked

    def text(self):
        return self._text

    def flags(self):
        return self._flags

    def setFlags(self, flags):
        self._flags = flags

    def setCheckState(self, state):
        self._check = state

    def checkState(self):
        return self._check


class QTableWidgetItem(object):
    def __init__(self, text):
        self._text = text

    def text(self):
        return self._text


class QSettings(object):
    """Application settings, kept for the test session (Slicer keeps them in its .ini file)."""

    store = {}
    path = "/tmp/slicer-standin-settings/Slicer.ini"  # tests point it at a temporary folder

    def value(self, key, default=None):
        return self.store.get(key, default)

    def setValue(self, key, value):
        self.store[key] = value

    def remove(self, key):
        self.store.pop(key, None)

    def contains(self, key):
        return key in self.store

    def fileName(self):
        return self.path
