"""Modal dialogs answered from a test script.

A modal dialog runs a nested event loop until the user answers; there is no user here, so every
modal call (``QDialog.exec_``, ``ctkMessageBox.exec_``, the static ``QFileDialog``/``QInputDialog``/
``QMessageBox`` functions) takes the next answer queued with :meth:`DialogScript.answer` instead,
and is recorded in :attr:`DialogScript.shown` (kind, title, text, override cursor). A modal call
with no matching answer is recorded in :attr:`DialogScript.unexpected` and raises
:class:`UnexpectedDialog` where the dialog would have opened, so a test sees it. The nested event
loop itself never runs: what a user could do while a modal dialog is open cannot be shown here.

Static dialogs return plain values, as PythonQt's generated wrappers do (``QString`` for
``QFileDialog.getOpenFileName``, where PyQt5 returns a (path, filter) tuple); ``bool* ok`` takes a
``PythonQt.BoolResult``. On Cancel they return what Qt 5.15 returns: an empty path, and for
``QInputDialog.getItem`` the current item (qinputdialog.cpp: ``QInputDialog::getItem``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from PyQt5 import QtWidgets

#: answer for "the user pressed Cancel / closed the dialog"
CANCEL = object()


class UnexpectedDialog(RuntimeError):
    """A modal dialog opened that the test script did not answer."""


@dataclass
class Shown:
    kind: str
    title: str
    text: str
    answer: Any = None
    cursor: Any = None  # the override cursor's shape while it was shown (None: the normal one)


@dataclass
class _Answer:
    kind: str
    value: Any
    contains: str = ""


@dataclass
class DialogScript:
    """The queue of answers and the record of dialogs shown (one per harness)."""

    queue: list[_Answer] = field(default_factory=list)
    shown: list[Shown] = field(default_factory=list)
    unexpected: list[Shown] = field(default_factory=list)
    progress: list[Any] = field(default_factory=list)
    cancel_progress: int = 0
    during_progress: list[Callable[[], None]] = field(default_factory=list)

    def answer(self, kind: str, value: Any, contains: str = "") -> None:
        """Queue the answer to the next modal dialog of ``kind`` ("ctkMessageBox", "QDialog",
        "QFileDialog.getSaveFileName", "QInputDialog.getItem", ...), optionally checking that its
        title or text contains ``contains``."""
        self.queue.append(_Answer(kind, value, contains))

    def cancel_next_progress(self) -> None:
        """Press Cancel on the next progress dialog as soon as it is shown."""
        self.cancel_progress += 1

    def during_next_progress(self, action: Callable[[], None]) -> None:
        """Do ``action`` (close the scene, delete a node...) as soon as the next progress dialog
        is shown: what else could happen while a run is under way (its model work runs on the
        engine's worker while the module serves events)."""
        self.during_progress.append(action)

    def take(self, kind: str, title: str, text: str) -> Any:
        cursor = QtWidgets.QApplication.overrideCursor()
        record = Shown(kind, title, text, cursor=None if cursor is None else cursor.shape())
        self.shown.append(record)
        head = self.queue[0] if self.queue else None
        if head is None or head.kind != kind or head.contains not in f"{title}\n{text}":
            self.unexpected.append(record)
            wanted = f"{head.kind} containing {head.contains!r}" if head else "no dialog"
            raise UnexpectedDialog(f"unexpected modal {kind} {title!r}: {text[:300]!r} (the script"
                                   f" expected {wanted})")
        self.queue.pop(0)
        record.answer = head.value
        return head.value

    def reset(self) -> list[str]:
        """Forget everything; return what was wrong (answers never used, dialogs not answered)."""
        problems = [f"unused answer for {a.kind} ({a.contains!r})" for a in self.queue]
        problems += [f"unanswered {d.kind} {d.title!r}: {d.text[:200]!r}" for d in self.unexpected]
        problems += [f"unused action during a progress dialog: {a}" for a in self.during_progress]
        self.queue, self.shown, self.unexpected, self.progress = [], [], [], []
        self.during_progress = []
        self.cancel_progress = 0
        return problems


SCRIPT = DialogScript()


def _text_of(dialog: QtWidgets.QWidget) -> str:
    if isinstance(dialog, QtWidgets.QMessageBox):
        return dialog.text()
    if isinstance(dialog, QtWidgets.QProgressDialog):
        return dialog.labelText()
    labels = dialog.findChildren(QtWidgets.QLabel)
    return "\n".join(label.text() for label in labels)


def _kind(dialog: QtWidgets.QWidget) -> str:
    from .wrapping import wrapper_class

    return wrapper_class(type(dialog)).__name__


def run_modal(dialog: QtWidgets.QDialog) -> int:
    """``exec_()``: the scripted answer (a QMessageBox button or a QDialog result code)."""
    value = SCRIPT.take(_kind(dialog), dialog.windowTitle(), _text_of(dialog))
    if value is CANCEL:
        value = QtWidgets.QMessageBox.Cancel if isinstance(dialog, QtWidgets.QMessageBox) else 0
    dialog.setResult(int(value))
    dialog.hide()
    return int(value)


def progress_shown(dialog: QtWidgets.QProgressDialog) -> None:
    """``QProgressDialog.show()``: recorded; Cancel pressed if the script asks (``canceled()``
    emitted, as the button does: ``cancel()`` alone would emit nothing); then the script's action
    during the run, if any."""
    SCRIPT.progress.append((dialog.windowTitle(), dialog.labelText()))
    dialog.show()
    if SCRIPT.cancel_progress:  # what its Cancel button does (qprogressdialog.cpp, Qt 5.15: the
        SCRIPT.cancel_progress -= 1  # button's clicked() emits canceled(), connected to cancel())
        dialog.canceled.emit()
    if SCRIPT.during_progress:
        SCRIPT.during_progress.pop(0)()


def static_path(kind: str, caption: str) -> str:
    value = SCRIPT.take(kind, caption, "")
    return "" if value is CANCEL else str(value)


def static_item(title: str, label: str, items: list, current: int, ok: Any) -> str:
    value = SCRIPT.take("QInputDialog.getItem", title, f"{label} {list(items)}")
    accepted = value is not CANCEL
    if accepted and value not in items:
        raise UnexpectedDialog(f"the script chose {value!r}, not one of {list(items)}")
    if ok is not None:
        ok._value = accepted
    return str(value) if accepted else (items[current] if 0 <= current < len(items) else "")


def static_text(title: str, label: str, text: str = "", ok: Any = None) -> tuple[str, bool] | str:
    """``QInputDialog.getText``; without ``ok`` (the harness's own callers) returns (text, accepted)."""
    value = SCRIPT.take("QInputDialog.getText", title, label)
    accepted = value is not CANCEL
    result = str(value) if accepted else ""
    if ok is None:
        return result, accepted
    ok._value = accepted
    return result


def static_message(kind: str, title: str, text: str) -> int:
    value = SCRIPT.take(f"QMessageBox.{kind}", title, text)
    return int(QtWidgets.QMessageBox.Cancel if value is CANCEL else value)
