//! Collects the `///` docs of `aura serve`'s configuration for `aura config --example`: starting at
//! `Config` in `src/config.rs`, every named field of every struct the configuration is made of (in this
//! crate or another Aura crate of the workspace) becomes a `(dotted key, doc text)` entry, in declaration
//! order. Vectors of structs are keyed `name[].field`, maps of structs `name.*.field`. The docs are read
//! from the very source the types compile from, so the example cannot drift from the code; a key the
//! serialized defaults have and this table lacks fails `config_doc`'s tests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use syn::{Attribute, Expr, Fields, GenericArgument, Item, Lit, Meta, PathArguments, Type};

/// One struct's docs and fields, as parsed.
struct StructDef {
    crate_name: String,
    fields: Vec<FieldDef>,
}

struct FieldDef {
    /// The TOML key (serde `rename` applied); empty for a flattened field.
    key: String,
    doc: String,
    ty: Type,
    flatten: bool,
}

/// Every struct with named fields of the crates read so far, by crate and name.
struct Sources {
    crates_dir: PathBuf,
    structs: HashMap<(String, String), Vec<StructDef>>,
    read: Vec<String>,
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let crates_dir = manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.clone());
    let mut sources = Sources {
        crates_dir,
        structs: HashMap::new(),
        read: Vec::new(),
    };
    let mut entries = Vec::new();
    let mut stack = Vec::new();
    sources.walk("aura", "Config", "", &mut entries, &mut stack);
    let mut out = String::from(
        "/// `(dotted key, doc text)` of every configuration key, in declaration order (build.rs).\n\
         pub(crate) static CONFIG_DOCS: &[(&str, &str)] = &[\n",
    );
    for (key, doc) in &entries {
        out.push_str(&format!("    ({key:?}, {doc:?}),\n"));
    }
    out.push_str("];\n");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    std::fs::write(out_dir.join("config_docs.rs"), out).expect("write config_docs.rs");
    println!("cargo:rerun-if-changed=build.rs");
}

impl Sources {
    /// Appends the entries of struct `name` of `krate` under `prefix`.
    fn walk(
        &mut self,
        krate: &str,
        name: &str,
        prefix: &str,
        out: &mut Vec<(String, String)>,
        stack: &mut Vec<String>,
    ) {
        let Some(def) = self.find(krate, name) else {
            return;
        };
        // A self-referential type would recurse forever; the configuration has none, but be safe.
        let id = format!("{krate}::{name}");
        if stack.contains(&id) {
            return;
        }
        stack.push(id);
        let fields: Vec<(String, String, Type, bool, String)> = def
            .fields
            .iter()
            .map(|f| {
                (
                    f.key.clone(),
                    f.doc.clone(),
                    f.ty.clone(),
                    f.flatten,
                    def.crate_name.clone(),
                )
            })
            .collect();
        for (key, doc, ty, flatten, home) in fields {
            let path = match (prefix.is_empty(), flatten) {
                (_, true) => prefix.to_owned(),
                (true, false) => key.clone(),
                (false, false) => format!("{prefix}.{key}"),
            };
            if !flatten {
                out.push((path.clone(), doc));
            }
            let (suffix, inner) = unwrap_container(&ty);
            if let Some((krate, name)) = resolve(&home, inner) {
                self.walk(&krate, &name, &format!("{path}{suffix}"), out, stack);
            }
        }
        stack.pop();
    }

    /// The struct `name` of `krate`, reading the crate's sources on first use.
    fn find(&mut self, krate: &str, name: &str) -> Option<&StructDef> {
        if !self.read.iter().any(|c| c == krate) {
            self.read.push(krate.to_owned());
            let dir = self.crates_dir.join(krate.replace('_', "-")).join("src");
            let mut files = Vec::new();
            rust_files(&dir, &mut files);
            for file in files {
                println!("cargo:rerun-if-changed={}", file.display());
                let Ok(text) = std::fs::read_to_string(&file) else {
                    continue;
                };
                let Ok(parsed) = syn::parse_file(&text) else {
                    continue;
                };
                for item in parsed.items {
                    if let Item::Struct(s) = item {
                        if let Fields::Named(named) = &s.fields {
                            let fields = named
                                .named
                                .iter()
                                .filter_map(|f| {
                                    let serde = serde_flags(&f.attrs);
                                    if serde.skip {
                                        return None;
                                    }
                                    let ident = f.ident.as_ref()?.to_string();
                                    Some(FieldDef {
                                        key: serde.rename.unwrap_or(ident),
                                        doc: doc_text(&f.attrs),
                                        ty: f.ty.clone(),
                                        flatten: serde.flatten,
                                    })
                                })
                                .collect();
                            self.structs
                                .entry((krate.to_owned(), s.ident.to_string()))
                                .or_default()
                                .push(StructDef {
                                    crate_name: krate.to_owned(),
                                    fields,
                                });
                        }
                    }
                }
            }
        }
        let defs = self.structs.get(&(krate.to_owned(), name.to_owned()))?;
        // Two structs of one name in a crate: which one a path means is not known without name
        // resolution, so neither is documented (and the missing docs fail the tests).
        (defs.len() == 1).then(|| &defs[0])
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `Option<T>` and `Box<T>` are `T`; `Vec<T>` is `T` under `[]`; a map is its values under `.*`.
fn unwrap_container(ty: &Type) -> (String, &Type) {
    let Type::Path(p) = ty else {
        return (String::new(), ty);
    };
    let Some(last) = p.path.segments.last() else {
        return (String::new(), ty);
    };
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return (String::new(), ty);
    };
    let types: Vec<&Type> = args
        .args
        .iter()
        .filter_map(|a| match a {
            GenericArgument::Type(t) => Some(t),
            _ => None,
        })
        .collect();
    match (last.ident.to_string().as_str(), types.as_slice()) {
        ("Option" | "Box", [inner]) => unwrap_container(inner),
        ("Vec", [inner]) => {
            let (suffix, t) = unwrap_container(inner);
            (format!("[]{suffix}"), t)
        }
        ("BTreeMap" | "HashMap" | "IndexMap", [_, value]) => {
            let (suffix, t) = unwrap_container(value);
            (format!(".*{suffix}"), t)
        }
        _ => (String::new(), ty),
    }
}

/// The crate and struct name a field's type names: `aura_engine::GuardConfig` is `aura_engine`'s,
/// an unqualified name (or `crate::…`) the referring struct's own crate's. Only Aura's crates are read.
fn resolve(home: &str, ty: &Type) -> Option<(String, String)> {
    let Type::Path(p) = ty else { return None };
    let segments: Vec<String> = p
        .path
        .segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect();
    let name = segments.last()?.clone();
    let krate = match segments.first().map(String::as_str) {
        Some(first) if segments.len() > 1 && first.starts_with("aura") => first.to_owned(),
        Some("crate" | "self" | "super") | None => home.to_owned(),
        Some(_) if segments.len() > 1 => return None,
        Some(_) => home.to_owned(),
    };
    Some((krate, name))
}

/// `///` lines, joined with newlines, one leading space removed from each.
fn doc_text(attrs: &[Attribute]) -> String {
    let mut lines = Vec::new();
    for attr in attrs {
        if !attr.path().is_ident("doc") {
            continue;
        }
        if let Meta::NameValue(nv) = &attr.meta {
            if let Expr::Lit(lit) = &nv.value {
                if let Lit::Str(s) = &lit.lit {
                    let line = s.value();
                    lines.push(
                        line.strip_prefix(' ')
                            .unwrap_or(&line)
                            .trim_end()
                            .to_owned(),
                    );
                }
            }
        }
    }
    lines.join("\n").trim().to_owned()
}

#[derive(Default)]
struct SerdeFlags {
    skip: bool,
    flatten: bool,
    rename: Option<String>,
}

/// The serde field attributes that change a key: `skip`, `flatten`, `rename`.
fn serde_flags(attrs: &[Attribute]) -> SerdeFlags {
    let mut flags = SerdeFlags::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let _ = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("skip") || meta.path.is_ident("skip_deserializing") {
                flags.skip = true;
            } else if meta.path.is_ident("flatten") {
                flags.flatten = true;
            } else if meta.path.is_ident("rename") {
                let value: syn::LitStr = meta.value()?.parse()?;
                flags.rename = Some(value.value());
            } else if meta.input.peek(syn::Token![=]) {
                // `with = "…"`, `default = "…"` and the like: consume the value.
                let _: Expr = meta.value()?.parse()?;
            } else if meta.input.peek(syn::token::Paren) {
                let _ = meta.parse_nested_meta(|_| Ok(()));
            }
            Ok(())
        });
    }
    flags
}
