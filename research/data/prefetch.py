"""`Prefetch`: a background thread that keeps the next items of an iterator ready."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


class Prefetch:
    """Runs `produce(stop_event)` in a background thread, at most `depth` items ahead.

    Iterate it; an error in the thread is raised at the item where it happened.
    `close()` (or leaving a `with` block) stops the thread and the grain workers.
    """

    def __init__(self, produce: Callable[[threading.Event], Iterator], depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, args=(produce,), daemon=True)
        self._thread.start()

    def _run(self, produce) -> None:
        items = produce(self._stop)
        try:
            for item in items:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            self._put(_Failure(err))
        finally:
            items.close()  # closes the grain iterators (worker processes) it holds

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            raise item.error
        return item

    def close(self) -> None:
        self._stop.set()
        self._done = True
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.1)
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
