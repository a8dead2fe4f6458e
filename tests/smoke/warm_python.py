"""A warm Python for the tests that start Python processes (the README command test's ~70: stages, benchmarks,
`make run`'s stages, torchrun's launcher and each of its workers; some others, see conftest.warm_python): each
process hands its work, in its first milliseconds, to a server that has already imported torch, torchvision,
numpy, matplotlib, pyautoattack and torchattacks; the server forks, and the fork does the work as that process
would have. So they do not each spend 2 to 3.5 s of CPU on the same imports (torchvision alone imports
torch._dynamo: 1.6 s). The commands are not changed: each process is started as before (torchrun's workers are
still separate processes, talking over gloo); it waits for its fork, passes SIGINT, SIGTERM and SIGHUP on to
it, and exits with its exit code, or dies of the signal that killed the fork. The fork runs in a process group of
its own with the processes it starts, so that a kill of "my process group" from inside (the crash tests' trap)
reaches what it would; it is killed when the waiting process is (a test's timeout), and every process here dies
with its parent (the server with its pytest worker). A test that kills a process, or signals its process group,
from outside does not use it: the signal would reach the waiting process and at most the fork, not the fork's
own children. The fork draws fresh torch and numpy seeds; its hash seed is the server's: a test that compares
two runs for equality runs one of them the ordinary way (tests/test_crash_resume.py's uninterrupted run).

How: tests/smoke/sitecustomize.py, which every Python process with tests/smoke on its PYTHONPATH loads, calls
hand_over() when SAT_WARM_SOCKET names the server's socket. It sends its arguments, working folder, environment
and standard streams (the file descriptors themselves) over that Unix socket. The fork takes them and runs the
work (a script, `-c` code or `-m` module) as the interpreter would: sys.argv, sys.orig_argv, sys.path[0], a
fresh __main__ with __file__, the exit code, the traceback of an uncaught exception (without this file's frames),
the wait for non-daemon threads and the atexit handlers, -u, an uncaught KeyboardInterrupt's SIGINT. A process
goes on by itself, as before, when it is anything else (a Python flag other than -u, no argument, a script that
is not a file, a multiprocessing child or any process given file descriptors beyond 0-2, a notebook kernel),
another interpreter than the server's, when its environment differs from the server's in a variable other than
those read at run time (RUN_TIME_ENV), or when there is no server (SAT_WARM_DEBUG=FILE: the server appends why to FILE).

    python warm_python.py serve SOCKET      the server (conftest.warm_python starts one per test worker)
Nothing here is part of the repo's method; a reader of the paper may skip it."""
import json
import os
import signal
import socket
import struct
import sys

# A process whose environment differs from the server's runs on its own (the preloaded modules may have read a
# variable at import: TQDM_DISABLE, TORCH_COMPILE_DISABLE, PYTHONIOENCODING, ...), except in these, which the
# repo, torchrun, make, the shell and the tests set per process and which are read at run time
RUN_TIME_ENV = ("SAT_", "CRASH_AT", "RANK", "LOCAL_", "WORLD_SIZE", "GROUP_", "ROLE_", "MASTER_", "TORCHELASTIC_",
                "TORCH_NCCL_", "NCCL_", "PWD", "OLDPWD", "SHLVL", "_", "MAKE", "MFLAGS", "PATH", "JUPYTER_", "JPY_",
                "PYTEST_", "COLUMNS", "LINES", "TORCHINDUCTOR_CACHE_DIR")


def compared_env(env):
    """The variables that must match the server's for a process to be handed over: all but RUN_TIME_ENV."""
    return {k: v for k, v in env.items() if not k.startswith(RUN_TIME_ENV)}


def send_msg(conn, obj, fds=()):
    data = json.dumps(obj).encode()
    data = struct.pack("!I", len(data)) + data
    if fds:
        socket.send_fds(conn, [data], list(fds))
    else:
        conn.sendall(data)


def recv_exactly(conn, n, got=b""):
    while len(got) < n:
        more = conn.recv(n - len(got))
        if not more:
            raise ConnectionError("closed")
        got += more
    return got


def recv_msg(conn, with_fds=0):
    """(message, file descriptors): send_msg's length-prefixed JSON, and up to with_fds descriptors sent with it."""
    head, fds = (socket.recv_fds(conn, 4, with_fds)[:2] if with_fds else (b"", []))
    n, = struct.unpack("!I", recv_exactly(conn, 4, head))
    return json.loads(recv_exactly(conn, n)), fds


# ---- the process that hands over: called by sitecustomize, before anything is imported -------------------------

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def work_of(orig_argv):
    """The part of this process's command line the server can run (`[-u] script args`, `[-u] -c code args` or
    `[-u] -m module args`), or None: the interpreter's own path first, then at most -u."""
    args = list(orig_argv[1:])
    unbuffered = args[:1] == ["-u"]
    args = args[1:] if unbuffered else args
    if not args or args[0] == "-" or (args[0].startswith("-") and args[0] not in ("-c", "-m")) or \
            (args[0] in ("-c", "-m") and len(args) < 2):
        return None
    if args[0] == "-c" and "multiprocessing" in args[1]:   # a spawned child: it reads file descriptors of its parent
        return None
    if args[0] == "-m" and args[1].startswith("ipykernel"):   # a notebook kernel: its own event loop and backend
        return None
    if not args[0].startswith("-") and not os.path.isfile(args[0]):   # no such script, a folder: the interpreter says
        return None
    if set(os.listdir("/proc/self/fd")) - {"0", "1", "2", "3"}:   # descriptors passed on by the parent (3: the listing)
        return None
    return {"argv": args, "unbuffered": unbuffered, "orig_argv": list(orig_argv), "executable": sys.executable,
            "interpreter": [sys.version, os.path.realpath(sys.prefix)]}


def hand_over(sock_path):
    """Have the server run this process's work; return only if it cannot (the process then goes on as usual), else
    wait for the fork and exit with its exit code."""
    try:
        work = work_of(sys.orig_argv)
    except OSError:
        return
    if work is None or not os.path.exists(sock_path):
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)   # held until they can be passed on: no work done twice
    try:
        conn = socket.socket(socket.AF_UNIX)
        conn.connect(sock_path)
        send_msg(conn, {**work, "cwd": os.getcwd(), "env": dict(os.environ)}, fds=(0, 1, 2))
        reply, _ = recv_msg(conn)
    except (OSError, ConnectionError):
        reply = {"fallback": True}
    if reply.get("fallback"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        return
    try:   # from here on the work is the fork's: this process must not go on to do it again
        pid = reply["pid"]
        for s in FORWARDED:   # passed on to the fork doing the work
            signal.signal(s, lambda sig, frame: os.kill(pid, sig))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        status, _ = recv_msg(conn)
        if status["signal"]:   # the fork was killed by a signal: so is this process, as its caller would have seen
            if status["signal"] not in (signal.SIGKILL, signal.SIGSTOP):
                signal.signal(status["signal"], signal.SIG_DFL)
            os.kill(os.getpid(), status["signal"])
        os._exit(status["code"])
    finally:
        os._exit(1)


# ---- the server --------------------------------------------------------------------------------------------------

def die_with_parent():
    """Linux: this process gets SIGKILL when its parent ends (the server when its pytest worker is killed, a fork
    when its supervisor is): nothing is left running behind a killed test run."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_command(argv, unbuffered=False):
    """Run argv (as given after `python`) in this process as the interpreter would; returns the exit code."""
    import atexit
    import importlib.machinery
    import runpy
    import threading
    import traceback
    import types
    import io
    import numpy
    import torch
    torch.seed()            # a fresh process's random state, not the server's (random reseeds itself at fork)
    numpy.random.seed()
    if unbuffered:          # -u: unbuffered binary layer, as the interpreter makes it
        for name, fd in (("stdout", 1), ("stderr", 2)):
            old = getattr(sys, name)
            setattr(sys, name, io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding=old.encoding,
                                                errors=old.errors, write_through=True))
    interrupted = False
    try:
        try:
            if argv[0] == "-m":
                sys.argv = [argv[1]] + argv[2:]
                sys.path.insert(0, os.getcwd())
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:   # a script or -c code, in a fresh __main__, as the interpreter makes it
                main = types.ModuleType("__main__")
                main.__dict__.update(__builtins__=__builtins__, __spec__=None, __package__=None)
                if argv[0] == "-c":
                    sys.argv = ["-c"] + argv[2:]
                    sys.path.insert(0, "")
                    code = compile(argv[1], "<string>", "exec")
                else:
                    path = os.path.abspath(argv[0])
                    sys.argv = list(argv)
                    sys.path.insert(0, os.path.dirname(os.path.realpath(path)))
                    main.__file__ = path
                    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
                    with open(path, "rb") as f:
                        code = compile(f.read(), path, "exec")
                sys.modules["__main__"] = main
                exec(code, main.__dict__)
            status = 0
        except SystemExit as e:
            status = e.code
            if status is None:
                status = 0
            elif not isinstance(status, int):
                print(status, file=sys.stderr)
                status = 1
        except BaseException as e:   # the traceback the interpreter prints, without this file's frames
            tb = e.__traceback__
            while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
                tb = tb.tb_next
            traceback.print_exception(type(e), e, tb)
            status, interrupted = 1, isinstance(e, KeyboardInterrupt)
        try:
            threading._shutdown()   # what the interpreter does at its end: wait for non-daemon threads, then atexit
            atexit._run_exitfuncs()
        except BaseException:
            pass
    finally:
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:
                pass
    if interrupted:   # an uncaught KeyboardInterrupt: the interpreter ends by SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return status


def serve(sock_path):
    mine = compared_env(os.environ)   # before the imports, which may set some (a fresh process starts without)
    import matplotlib
    matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
    import matplotlib.pyplot  # noqa: F401
    import numpy  # noqa: F401
    import torch
    import torchvision  # noqa: F401
    import tqdm  # noqa: F401
    try:
        import pyautoattack  # noqa: F401
        import torchattacks  # noqa: F401
    except ImportError:
        pass
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    path0 = sys.path[1:]   # without this file's folder: each command puts its own first
    interpreter = [sys.version, os.path.realpath(sys.prefix)]
    die_with_parent()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)   # supervisors are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(sock_path + ".tmp")
    listener.listen(64)
    os.rename(sock_path + ".tmp", sock_path)   # processes see the socket only once it listens
    while True:
        conn, _ = listener.accept()
        try:
            request, fds = recv_msg(conn, with_fds=3)
        except (OSError, ConnectionError, ValueError):
            conn.close()
            continue
        if len(fds) != 3 or compared_env(request["env"]) != mine or request["interpreter"] != interpreter:
            if os.environ.get("SAT_WARM_DEBUG"):   # a file: why a process ran on its own is appended there
                theirs = compared_env(request["env"])
                with open(os.environ["SAT_WARM_DEBUG"], "a") as f:
                    print("on its own:", request["argv"][:2], request["interpreter"] != interpreter, len(fds),
                          {k: (mine.get(k), theirs.get(k)) for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)},
                          file=f)
            send_msg(conn, {"fallback": True})
            for fd in fds:
                os.close(fd)
            conn.close()
            continue
        if os.fork() == 0:   # the supervisor: forks the command's process, waits for it, reports its exit code
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            die_with_parent()
            pid = os.fork()
            if pid == 0:   # the command's process, in a process group of its own (with the processes it starts):
                os.setpgid(0, 0)   # os.killpg(0, ...) from inside, as the crash tests do, reaches what it would
                die_with_parent()
                conn.close()
                for i, fd in enumerate(fds):
                    os.dup2(fd, i)
                    os.close(fd)
                os.chdir(request["cwd"])
                os.environ.clear()
                os.environ.update(request["env"])
                sys.path[:] = path0
                sys.orig_argv = request["orig_argv"]
                sys.executable = request["executable"]
                os._exit(run_command(request["argv"], request["unbuffered"]) & 0xFF)
            for fd in fds:
                os.close(fd)
            send_msg(conn, {"pid": pid})
            import select
            # the fork's end, or before it the waiting process's (killed, e.g. by a test's timeout): then the fork's
            if conn in select.select([conn, os.pidfd_open(pid)], [], [])[0] and not conn.recv(1, socket.MSG_PEEK):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
            _, status = os.waitpid(pid, 0)
            exited = os.WIFEXITED(status)
            try:
                send_msg(conn, {"code": os.WEXITSTATUS(status) if exited else 1,
                                "signal": None if exited else os.WTERMSIG(status)})
            except OSError:
                pass
            os._exit(0)
        for fd in fds:
            os.close(fd)
        conn.close()


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    serve(sys.argv[2])
