use super::features;
use super::Transform::{self, *};

fn t(tr: Transform, input: &str) -> String {
    String::from_utf8_lossy(&tr.apply(input.as_bytes())).into_owned()
}

#[test]
fn each_transformation_as_modsecurity_defines_it() {
    let cases: &[(Transform, &str, &str)] = &[
        (UrlDecode, "a%20b+c%2", "a b c%2"),
        (UrlDecode, "%27%20OR%201%3D1", "' OR 1=1"),
        (UrlDecodeUni, "%u0027%uff1cscript%uFF1E", "'<script>"),
        (UrlDecodeUni, "%uzzzz%41", "%uzzzzA"),
        (Lowercase, "SeLeCt", "select"),
        (RemoveNulls, "a\0b\0", "ab"),
        (RemoveWhitespace, " a\tb\nc ", "abc"),
        (CompressWhitespace, "a \t\n b  c", "a b c"),
        (
            HtmlEntityDecode,
            "&lt;script&gt;&#97;&#x6C;ert&#40;1&#41;",
            "<script>alert(1)",
        ),
        (
            HtmlEntityDecode,
            "&#106avascript: &QUOT;x&quot &unknown;",
            "javascript: \"x\" &unknown;",
        ),
        (JsDecode, r"\x3cscript\u003e\101\'\n", "<script>A'\n"),
        (JsDecode, r"\uff1c\q", "<q"),
        (CssDecode, r"\6a avascript\3a \00003Cx\z", "javascript:<xz"),
        (
            CmdLine,
            r#"C:\WINDOWS\system32\cmd.exe /c "dir",x;y ^p"#,
            "c:windowssystem32cmd.exe/c dir x y p",
        ),
        (CmdLine, "cat  /etc/passwd", "cat/etc/passwd"),
        (ReplaceComments, "un/**/ion/* sel", "un ion "),
        (NormalizePath, "/a/./b//c/../d", "/a/b/d"),
        (NormalizePath, "../../etc/passwd", "../../etc/passwd"),
        (NormalizePath, "/a/b/", "/a/b/"),
        (NormalizePathWin, r"C:\a\..\b\.\c", "C:/b/c"),
        (Utf8ToUnicode, "aé€", "a%u00e9%u20ac"),
        (HexEncode, "a\x7f", "617f"),
        (Length, "héllo", "6"),
        (Base64Decode, "PHNjcmlwdD4=", "<script>"),
        (Base64Decode, "PHNjcmlwdD4", "<script>"),
        (Base64Decode, "PHNj!cmlwdD4", "<sc"),
    ];
    for (tr, input, want) in cases {
        assert_eq!(t(*tr, input), *want, "{tr:?}({input:?})");
    }
    assert_eq!(
        Sha1.apply(b"abc").as_ref(),
        [
            0xa9, 0x99, 0x3e, 0x36, 0x47, 0x06, 0x81, 0x6a, 0xba, 0x3e, 0x25, 0x71, 0x78, 0x50,
            0xc2, 0x6c, 0x9c, 0xd0, 0xd8, 0x9d
        ]
    );
}

#[test]
fn clean_input_is_not_copied() {
    for tr in [
        Lowercase,
        UrlDecode,
        UrlDecodeUni,
        RemoveNulls,
        HtmlEntityDecode,
        JsDecode,
        CssDecode,
        ReplaceComments,
        Utf8ToUnicode,
    ] {
        assert!(
            matches!(
                tr.apply(b"plain ascii text 123"),
                std::borrow::Cow::Borrowed(_)
            ),
            "{tr:?}"
        );
    }
}

#[test]
fn every_transformation_the_crs_uses_is_known() {
    // bench/waf/crs_census.py's list for CRS 3.3.4 (`none` resets the chain).
    for name in [
        "urlDecodeUni",
        "lowercase",
        "htmlEntityDecode",
        "utf8toUnicode",
        "removeNulls",
        "jsDecode",
        "cssDecode",
        "cmdLine",
        "urlDecode",
        "compressWhitespace",
        "removeWhitespace",
        "normalisePath",
        "sha1",
        "hexEncode",
        "length",
        "normalizePathWin",
        "normalizePath",
        "replaceComments",
        "base64Decode",
    ] {
        assert!(Transform::named(name).is_some(), "{name}");
    }
    assert_eq!(Transform::named("none"), None);
}

/// What `keeps` promises (the engine then skips the transformation): on every line of the
/// corpora and a few edge cases, a transformation said to keep a value returns it as it is.
#[test]
fn keeps_is_only_said_of_values_a_transformation_leaves_alone() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/waf/corpus");
    let mut values: Vec<Vec<u8>> = [
        &b""[..],
        b" ",
        b"a  b",
        b" a",
        b"a ",
        b"a\tb",
        b"./x",
        b"x/../y",
        b"A",
        b"caf\xc3\xa9",
        b"a,b;c",
        b"x(y)",
        b"1 OR 1=1",
        b"/*x*/",
        b"&amp;",
        b"\\x41",
        b"%41+",
    ]
    .iter()
    .map(|v| v.to_vec())
    .collect();
    for kind in ["attack", "benign"] {
        for f in std::fs::read_dir(dir.join(kind)).unwrap().flatten() {
            let text = std::fs::read(f.path()).unwrap();
            values.extend(text.split(|b| *b == b'\n').map(<[u8]>::to_vec));
        }
    }
    let all = [
        "base64Decode",
        "cmdLine",
        "compressWhitespace",
        "cssDecode",
        "hexEncode",
        "htmlEntityDecode",
        "jsDecode",
        "length",
        "lowercase",
        "normalizePath",
        "normalizePathWin",
        "removeNulls",
        "removeWhitespace",
        "replaceComments",
        "sha1",
        "urlDecode",
        "urlDecodeUni",
        "utf8toUnicode",
    ];
    for name in all {
        let t = Transform::named(name).unwrap();
        for v in &values {
            if t.keeps(features::of(v)) {
                assert_eq!(
                    &*t.apply(v),
                    &v[..],
                    "{name} on {:?}",
                    String::from_utf8_lossy(v)
                );
            }
        }
    }
}
