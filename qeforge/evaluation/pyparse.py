"""Python's parser behind one lock. CPython 3.11 before 3.11.8 is not thread-safe there: parses running
at once in threads can raise "SystemError: AST constructor recursion depth mismatch" (python/cpython
#106905), and scoring runs its scorers on a thread pool. Parsing is a few ms of a scorer's seconds."""

import ast
import threading

_LOCK = threading.Lock()


def parse(source: str, filename: str = "<unknown>") -> ast.Module:
    with _LOCK:
        return ast.parse(source, filename)


def compile_module(source: str | ast.Module, filename: str):
    with _LOCK:
        return compile(source, filename, "exec")
