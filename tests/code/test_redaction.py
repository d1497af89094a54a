"""The redaction helper: passwords and token-like parameters masked in URIs and free text, nothing else
touched."""

import pytest

from housing.errors import is_credential_name, mask_text, mask_uri, masked_first_line, secrets_of


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        ("http://user:pw@host:5000", "http://user:***@host:5000"),
        ("https://admin:S3cret@mlflow.example.com/path/", "https://admin:***@mlflow.example.com/path/"),
        ("postgresql://user:pw@db:5432/mlflow", "postgresql://user:***@db:5432/mlflow"),
        (
            "postgresql+psycopg://u:Pw2@127.0.0.1:5/x?sslmode=require",
            "postgresql+psycopg://u:***@127.0.0.1:5/x?sslmode=require",
        ),
        ("mysql+pymysql://u:p%40ss@h/db", "mysql+pymysql://u:***@h/db"),
        ("postgresql://u:p@ss@host/db", "postgresql://u:***@host/db"),  # unencoded @ in the password
        ("postgresql://u:p/ss@host/db", "postgresql://u:***@host/db"),  # unencoded / (SQLAlchemy accepts it)
        ("postgresql://u:p?ss#x@host/db", "postgresql://u:***@host/db"),
        ("https://ghp_0123456789@github.com/org/repo.git", "https://***@github.com/org/repo.git"),
        ("https://:pw@host/x", "https://:***@host/x"),
        ("https://host/data.csv?token=abc", "https://host/data.csv?token=***"),
        ("https://host/d.csv?a=1&API_KEY=k&b=2&sig=s", "https://host/d.csv?a=1&API_KEY=***&b=2&sig=***"),
        (
            "https://host/d.csv?client_secret=x;refresh_token=y",
            "https://host/d.csv?client_secret=***;refresh_token=***",
        ),
        (
            "https://b.s3.amazonaws.com/k.csv?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=ab",
            "https://b.s3.amazonaws.com/k.csv?X-Amz-Credential=***&X-Amz-Signature=***",
        ),
        ("https://host/cb#access_token=abc&state=1", "https://host/cb#access_token=***&state=1"),
        ("http://u:pw@host/d.csv?token=t&page=2", "http://u:***@host/d.csv?token=***&page=2"),
    ],
)
def test_credentials_are_masked_and_the_rest_kept(uri, masked):
    assert mask_uri(uri) == masked
    assert mask_uri(masked) == masked  # idempotent: masking a masked URI changes nothing


@pytest.mark.parametrize(
    "unchanged",
    [
        "/data/california_housing.csv",
        "relative/dir/data.csv",
        "/odd/path?token=abc",  # a path, not a URL
        "C:\\data\\x.csv",
        "user:pw@host",  # no scheme: not a URL
        "sqlite:////tmp/mlflow.db",
        "sqlite:///mlflow.db",
        "file:///tmp/x.csv",
        "http://127.0.0.1:5000",
        "https://host:8080/users/@me",  # an @ in the path after a port is not userinfo
        "https://host/a?page=2&sort=name&keyword=x&monkey=1",
        "https://host/a?token=",
        "models:/CaliforniaHousing@production",
        "",
    ],
)
def test_urls_without_credentials_and_non_urls_stay_as_they_are(unchanged):
    assert mask_uri(unchanged) == unchanged


def test_credential_names():
    for name in (
        "token",
        "TOKEN",
        "Key",
        "pwd",
        "passwd",
        "auth",
        "X-Amz-Security-Token",
        "x-goog-signature",
        "api-key",
        "sas_token",
        "my_password",
        "credential",
    ):
        assert is_credential_name(name), name
    for name in ("page", "sort", "keyword", "name", "sslmode", "version"):
        assert not is_credential_name(name), name


def test_text_with_uris_key_values_and_known_secrets_is_masked():
    uri = "http://admin:S3cretPw@127.0.0.1:5000"
    text = (
        f"API request to {uri}/api/2.0/mlflow/x failed ('{uri}'); "
        "conninfo host=db password=Pw2 user=u; the password S3cretPw again, and S3cret%50w"
    )
    masked = mask_text(text, uri)
    assert "S3cretPw" not in masked and "Pw2" not in masked
    assert "http://admin:***@127.0.0.1:5000/api/2.0/mlflow/x" in masked
    assert "password=***" in masked and "host=db" in masked and "user=u" in masked


def test_known_secrets_in_both_encodings_and_short_ones_left_alone():
    assert secrets_of("http://u:p%40ss@h/", "https://h/x?token=abc&q=1") == {"p%40ss", "p@ss", "abc"}
    assert (
        secrets_of("http://u:pw@h/", "/a/path", "sqlite:///x.db") == set()
    )  # 2 characters: not struck from text
    assert mask_text("pwd is short", "http://u:pw@h/") == "pwd is short"


def test_first_line_is_masked_before_it_is_cut():
    uri = "http://admin:S3cretPw@127.0.0.1:5000"
    error = RuntimeError(f"API request to {uri}/api failed\nsecond line {uri}")
    assert masked_first_line(error, uri) == "API request to http://admin:***@127.0.0.1:5000/api failed"
    cut = masked_first_line(RuntimeError("x" * 20 + f" {uri}"), limit=40)  # the cut falls inside the password
    assert "S3cr" not in cut and cut.startswith("x" * 20 + " http://admin:")
    assert masked_first_line(ValueError()) == "ValueError"
