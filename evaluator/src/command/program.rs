//! The program a command names, found as `execvp` would find it, and the directories it needs
//! to see to run inside a sandbox that shows only what it is given.
//!
//! A bare name is looked up on the command's own `PATH`. What must be visible is the
//! executable's prefix — the directory above a `bin`, `sbin` or `shims` directory, so that a
//! Python under `~/.pyenv/versions/X` finds its library and a pyenv shim finds pyenv — taken
//! both for the path as found and for the canonical one (a virtual environment's `python`
//! links to the base interpreter and reads `pyvenv.cfg` beside its own `bin`). A script's
//! `#!` interpreter (through `/usr/bin/env NAME` too) is followed the same way.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// `execvp`'s search path when the command's environment has no `PATH`.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Directories whose parent is an installation prefix.
const PREFIX_CHILDREN: [&str; 3] = ["bin", "sbin", "shims"];
/// How many `#!` hops are followed (a shim runs `env bash`, which is one more).
const MAX_INTERPRETER_HOPS: usize = 3;

/// The executable a command names, as an absolute path. `read` maps a path as the sandbox
/// sees it to one we can read (see [`needs`]).
pub(crate) fn find(
    name: &str,
    path_var: Option<&str>,
    read: impl Fn(&Path) -> PathBuf,
) -> Result<PathBuf, String> {
    if name.contains('/') {
        let path = Path::new(name);
        if !path.is_absolute() {
            return Err(format!(
                "{name:?} is a relative path; name the program from {{config_dir}} \
                 (\"{{config_dir}}/{name}\") or by a name on PATH"
            ));
        }
        return if is_executable(&read(path)) {
            Ok(path.to_path_buf())
        } else {
            Err(format!("{name} is not an executable file"))
        };
    }
    let search = path_var.unwrap_or(DEFAULT_PATH);
    search
        .split(':')
        .filter(|dir| dir.starts_with('/'))
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| format!("{name:?} was not found on PATH ({search})"))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The directories (or single files) that `program` needs visible to run: its prefixes and
/// those of its `#!` interpreters. `home` is never offered as a prefix, nor is `/`; where a
/// prefix would be one of them, the executable's own directory (or the file alone) is taken.
/// `read` maps a path as the sandbox sees it to one we can read (a run's private directory
/// is seen from outside through its namespace).
pub(crate) fn needs(
    program: &Path,
    path_var: Option<&str>,
    home: Option<&Path>,
    read: impl Fn(&Path) -> PathBuf,
) -> Vec<PathBuf> {
    let mut needed = Vec::new();
    let mut current = Some(program.to_path_buf());
    for _ in 0..MAX_INTERPRETER_HOPS {
        let Some(executable) = current.take() else {
            break;
        };
        let readable = read(&executable);
        needed.push(visible_part(&executable, home));
        if let Ok(canonical) = fs::canonicalize(&readable) {
            if canonical != readable {
                needed.push(visible_part(&canonical, home));
            }
        }
        current = interpreter(&readable).and_then(|(interpreter, argument)| {
            if interpreter.file_name().is_some_and(|name| name == "env") {
                needed.push(visible_part(&interpreter, home));
                find(&argument?, path_var, &read).ok()
            } else {
                Some(interpreter)
            }
        });
    }
    needed.sort();
    needed.dedup();
    needed
}

/// The prefix of `executable` if it sits in a prefix's `bin`, else `executable` itself.
fn visible_part(executable: &Path, home: Option<&Path>) -> PathBuf {
    let dir = executable.parent().unwrap_or(Path::new("/"));
    let in_prefix = dir
        .file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| PREFIX_CHILDREN.contains(&name));
    match dir.parent() {
        Some(prefix) if in_prefix && prefix != Path::new("/") && Some(prefix) != home => {
            prefix.to_path_buf()
        }
        _ if in_prefix => dir.to_path_buf(),
        _ => executable.to_path_buf(),
    }
}

/// The interpreter a `#!` line names, and its first argument (the program for `env`).
fn interpreter(script: &Path) -> Option<(PathBuf, Option<String>)> {
    let mut head = [0u8; 256];
    let mut file = File::open(script).ok()?;
    let read = file.read(&mut head).ok()?;
    let line = head[..read].strip_prefix(b"#!")?;
    let line = &line[..line.iter().position(|&b| b == b'\n')?];
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_whitespace();
    let interpreter = PathBuf::from(words.next()?);
    // `env -S python3 -u` and `env python3` both name the program after the options.
    let argument = words.find(|word| !word.starts_with('-')).map(String::from);
    interpreter.is_absolute().then_some((interpreter, argument))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tree(PathBuf);

    impl Tree {
        fn new(name: &str) -> Tree {
            let path = std::env::temp_dir().join(format!(
                "evokernel-program-test-{name}-{}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            Tree(path)
        }

        fn executable(&self, relative: &str, text: &str) -> PathBuf {
            let path = self.0.join(relative);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, text).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
            path
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_name_is_found_on_the_given_path_only() {
        let tree = Tree::new("find");
        let tool = tree.executable("one/tool", "");
        tree.executable("two/tool", "");
        let dirs = format!(
            "relative:{}:{}",
            tree.0.join("one").display(),
            tree.0.join("two").display()
        );
        let identity = Path::to_path_buf;
        assert_eq!(find("tool", Some(&dirs), identity).unwrap(), tool);
        let error = find("tool", Some("/nonexistent"), identity).unwrap_err();
        assert!(
            error.contains("not found on PATH (/nonexistent)"),
            "{error}"
        );
        let error = find("./tool", None, identity).unwrap_err();
        assert!(error.contains("relative path"), "{error}");
        assert_eq!(
            find(tool.to_str().unwrap(), Some(""), identity).unwrap(),
            tool
        );
    }

    #[test]
    fn prefixes_interpreters_and_shims_are_what_a_program_needs() {
        let tree = Tree::new("needs");
        let python = tree.executable("pyenv/versions/3.12/bin/python3", "\x7fELF");
        let venv_bin = tree.0.join("venv/bin");
        fs::create_dir_all(&venv_bin).unwrap();
        std::os::unix::fs::symlink(&python, venv_bin.join("python")).unwrap();
        let shim = tree.executable(
            "pyenv/shims/python3",
            &format!("#!{}\nexec pyenv\n", venv_bin.join("python").display()),
        );
        let lone = tree.executable("scripts/score", "#!/usr/bin/env -S python -u\n");
        let path_var = venv_bin.display().to_string();
        let canonical = |path: &Path| fs::canonicalize(path).unwrap();
        let identity = |path: &Path| path.to_path_buf();

        let mut expected = vec![
            canonical(&tree.0.join("pyenv")),
            canonical(&tree.0.join("pyenv/versions/3.12")),
            tree.0.join("pyenv"),
            tree.0.join("venv"),
        ];
        expected.sort();
        expected.dedup();
        let mut found = needs(&shim, None, None, identity);
        found.retain(|path| path.starts_with(&tree.0) || path.starts_with(canonical(&tree.0)));
        assert_eq!(found, expected);

        // A script outside any prefix is bound alone; `env -S python` is followed on PATH.
        let found = needs(&lone, Some(&path_var), None, identity);
        assert!(found.contains(&lone), "{found:?}");
        assert!(found.contains(&tree.0.join("venv")), "{found:?}");
        assert!(found.contains(&PathBuf::from("/usr")), "{found:?}");

        // Never `/` or the home directory as a prefix: the bin directory instead.
        let home_tool = tree.executable("home/bin/tool", "");
        let found = needs(&home_tool, None, Some(&tree.0.join("home")), identity);
        assert!(found.contains(&tree.0.join("home/bin")), "{found:?}");
        assert_eq!(
            visible_part(Path::new("/bin/sh"), None),
            PathBuf::from("/bin")
        );
    }
}
