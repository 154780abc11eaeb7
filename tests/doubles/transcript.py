"""A command runner for unit tests of the batch backends: answers from a list of expected calls.

``Transcript([(argv, rc, stdout, stderr), ...])`` is a runner (``runner(argv) -> (rc, out, err)``) that
expects exactly these command lines in this order, so a test states every command a backend runs - and,
by ending the list, that it runs no other (``assert_done``)."""

from __future__ import annotations


class Transcript:
    def __init__(self, steps=()):
        self.steps = [self._step(step) for step in steps]
        self.calls = []

    @staticmethod
    def _step(step):
        argv, rc = step[0], step[1] if len(step) > 1 else 0
        out = step[2] if len(step) > 2 else ""
        err = step[3] if len(step) > 3 else ""
        return list(argv), rc, out, err

    def expect(self, argv, rc=0, out="", err=""):
        self.steps.append((list(argv), rc, out, err))
        return self

    def __call__(self, argv):
        argv = list(argv)
        self.calls.append(argv)
        if not self.steps:
            raise AssertionError("unexpected command (transcript exhausted): %r" % (argv,))
        want, rc, out, err = self.steps.pop(0)
        if want != argv:
            raise AssertionError("expected command %r, got %r" % (want, argv))
        return rc, out, err

    def assert_done(self):
        assert not self.steps, "commands expected but not run: %r" % ([step[0] for step in self.steps],)


class FakeClock:
    """A monotonic clock that only moves when the code under test sleeps."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds
