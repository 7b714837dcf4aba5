"""The browser tool: display format, local FTS5 corpus, the web over HTTP (servers on 127.0.0.1 only),
citations -> URL annotations."""

import asyncio
import http.server
import json
import threading
from functools import partial

import pytest

from gptoss.harmony import Message, Role
from gptoss.tools.base import ToolCall, ToolError
from gptoss.tools.browser import BrowserTool, CombinedBackend, LocalCorpus, SearxngSearch, WebBackend, find_page, render
from gptoss.tools.browser.egress import EgressPolicy
from gptoss.tools.browser.page import Page, html_to_page

PANDA_HTML = """<html><head><title>Giant Panda</title><script>var tracking = 1;</script></head><body>
<nav><a href="index.html">Home</a></nav>
<h1>Giant panda</h1>
<p>The giant panda (Ailuropoda melanoleuca) is a bear species endemic to China. It eats
<a href="bamboo.md">bamboo</a> almost exclusively. See also <a href="https://en.wikipedia.org/wiki/Sichuan">Sichuan</a>.</p>
<p>Adult pandas weigh between 100 and 115 kilograms. Newborn pandas weigh about 100 grams.</p>
</body></html>"""

BAMBOO_MD = """# Bamboo

Bamboos are evergreen perennial flowering plants. The [giant panda](pandas.html) depends on bamboo forests.

Some bamboo species grow 91 cm within a 24-hour period.
"""


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF with ``text`` in Helvetica (enough for pypdf to extract it)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for i, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return out


@pytest.fixture()
def corpus_dir(tmp_path):
    root = tmp_path / "corpus"
    (root / "animals").mkdir(parents=True)
    (root / "pandas.html").write_text(PANDA_HTML)
    (root / "bamboo.md").write_text(BAMBOO_MD)
    (root / "animals" / "koala.txt").write_text(
        "Koalas\n\nKoalas are arboreal marsupials native to Australia. They eat eucalyptus.\n"
    )
    (root / "animals" / "okapi.pdf").write_bytes(minimal_pdf("Okapis live in the Ituri rainforest of Congo."))
    (root / ".hidden.md").write_text("# secret giant panda notes")
    (root / "image.png").write_bytes(b"\x89PNG not a document")
    return root


@pytest.fixture()
def corpus(corpus_dir, tmp_path):
    c = LocalCorpus(corpus_dir, index_path=tmp_path / "index.sqlite", progress=False)
    yield c
    c.close()


def call(recipient: str, args: dict | str) -> ToolCall:
    text = args if isinstance(args, str) else json.dumps(args)
    return ToolCall(
        Message.from_role_and_content(Role.ASSISTANT, text)
        .with_recipient(recipient)
        .with_channel("analysis")
        .with_content_type("code")
    )


def run(tool, recipient, args):
    return asyncio.run(tool.run(call(recipient, args)))


def test_search_open_find_on_a_local_corpus(corpus, corpus_dir):
    stats = corpus.index()
    assert stats.documents == 4 and not stats.skipped  # html, md, txt, pdf; hidden and binary files left out
    browser = BrowserTool(corpus)

    r = run(browser, "browser.search", {"query": "what do giant pandas eat", "topn": 2})
    assert r.status == "completed"
    msg = r.messages[0]
    assert msg.author.role is Role.TOOL and msg.author.name == "browser.search" and msg.recipient == "assistant"
    assert msg.channel == "analysis"
    lines = r.output.split("\n")
    assert lines[0] == "[0] what do giant pandas eat"
    assert lines[1].startswith("**viewing lines [0 - ") and lines[1].endswith("**")
    assert lines[2] == ""
    assert lines[3] == "L0: # Search Results"
    assert "L2: * 【0†Giant Panda】" in r.output  # best match first (BM25), as a link
    assert "【1†Bamboo】" in r.output
    assert "Koalas" not in r.output and "Okapi" not in r.output  # topn

    r = run(browser, "browser.open", {"id": 0})
    url = (corpus_dir / "pandas.html").as_uri()
    assert r.output.startswith(f"[1] Giant Panda ({url})\n**viewing lines [0 - ")
    body = r.output.split("\n\n", 1)[1]
    assert body.startswith(
        "L0: 【0†Home】\nL1: \nL2: # Giant panda\nL3: \nL4: The giant panda (Ailuropoda melanoleuca)"
    )
    assert "【1†bamboo】" in body and "【2†Sichuan†en.wikipedia.org】" in body
    assert "tracking" not in body  # scripts are not text
    total = int(r.output.split("\n")[1].split(" of ")[1].rstrip("*"))
    assert f"viewing lines [0 - {total}] of {total}" in r.output

    r = run(browser, "browser.find", {"pattern": "WEIGH"})
    assert r.output.startswith(f"[2] Find results for text: `WEIGH` in `Giant Panda` ({url}/find?pattern=WEIGH)")
    assert "L0: # 【0†match at L" in r.output
    match_line = int(r.output.split("match at L")[1].split("】")[0])
    assert "weigh between 100" in r.output

    # citations: the page and the find results both resolve to the page's URL; search results have none
    text, annotations = browser.cite(f"Pandas eat bamboo【1†L4-L5】 and weigh 100 kg【2†L{match_line}】; see【0†L2】.")
    assert [a["url"] for a in annotations] == [url, url]
    first = annotations[0]
    assert text[first["start_index"] : first["end_index"]] == f" ([pandas.html]({url})) "
    assert first["type"] == "url_citation" and first["title"] == "Giant Panda"
    assert text.endswith("; see【0†L2】.")

    # follow a link from the page (cursor 1) to another corpus document
    r = run(browser, "browser.open", {"cursor": 1, "id": 1})
    assert r.output.startswith(f"[3] Bamboo ({(corpus_dir / 'bamboo.md').as_uri()})")
    assert "【0†giant panda】" in r.output
    # scroll: no id, a location and a number of lines
    r = run(browser, "browser.open", {"cursor": 3, "loc": 2, "num_lines": 1})
    assert r.output.split("\n")[1] == "**viewing lines [2 - 2] of 5**"
    assert r.output.endswith("L2: Bamboos are evergreen perennial flowering plants. The 【0†giant panda】 depends on")
    assert browser.state()["pages"][4]["cursor"] == 4


def test_text_and_pdf_documents_are_searchable(corpus):
    browser = BrowserTool(corpus)
    r = run(browser, "browser.search", {"query": "Ituri rainforest"})
    assert "L2: * 【0†okapi】" in r.output and "Okapis live in the Ituri rainforest" in r.output
    r = run(browser, "browser.open", {"id": 0})
    assert "L0: Okapis live in the Ituri rainforest of Congo." in r.output
    r = run(browser, "browser.search", {"query": "eucalyptus marsupials"})
    assert "【0†koala】" in r.output


def test_index_is_incremental(corpus, corpus_dir):
    assert corpus.index().indexed == 4
    assert corpus.index().indexed == 0
    (corpus_dir / "animals" / "koala.txt").write_text("Koalas sleep up to 20 hours a day, more than sloths.\n")
    (corpus_dir / "bamboo.md").unlink()
    stats = corpus.index()
    assert (stats.indexed, stats.removed, stats.documents) == (1, 1, 3)
    browser = BrowserTool(corpus)
    assert "【0†koala】" in run(browser, "browser.search", {"query": "sloths"}).output
    assert "No results" in run(browser, "browser.search", {"query": "evergreen perennial"}).output


def test_mistakes_come_back_to_the_model(corpus, corpus_dir):
    browser = BrowserTool(corpus)
    assert run(browser, "browser.open", {"id": 0}).output == "No pages to access! Search or open a page first."
    run(browser, "browser.search", {"query": "panda"})
    r = run(browser, "browser.open", {"id": 99})
    assert r.status == "failed" and r.output == "Invalid link id `99`."
    assert "out of range" in run(browser, "browser.find", {"pattern": "x", "cursor": 7}).output
    assert "Cannot run `find` on search results" in run(browser, "browser.find", {"pattern": "x"}).output
    assert "must be a JSON object" in run(browser, "browser.search", "query: pandas").output
    assert "Unknown function" in run(browser, "browser.click", {"id": 1}).output
    assert "Unknown argument" in run(browser, "browser.search", {"query": "x", "colour": 1}).output
    assert "Invalid location" in run(browser, "browser.open", {"loc": 10_000}).output
    # nothing outside the corpus folder can be opened
    outside = corpus_dir.parent / "outside.md"
    outside.write_text("# private")
    r = run(browser, "browser.open", {"id": outside.as_uri()})
    assert r.status == "failed" and "not in the local corpus" in r.output
    r = run(browser, "browser.open", {"id": (corpus_dir / ".." / "outside.md").as_uri()})
    assert r.status == "failed"


def test_describe_call_gives_web_search_actions(corpus):
    browser = BrowserTool(corpus)
    assert browser.describe_call(call("browser.search", {"query": "pandas"})) == {
        "action": {"type": "search", "query": "pandas"}
    }
    run(browser, "browser.search", {"query": "pandas"})
    action = browser.describe_call(call("browser.open", {"id": 0}))["action"]
    assert action["type"] == "open_page" and action["url"].endswith("pandas.html")
    assert (
        browser.describe_call(call("browser.open", {"id": "https://example.org/x"}))["action"]["url"]
        == "https://example.org/x"
    )
    assert browser.describe_call(call("browser.find", {"pattern": "bear"}))["action"]["type"] == "find"


def test_display_window_and_wrapping():
    text = "\n".join(f"line number {i} " + "word " * 30 for i in range(200))
    page = Page(url="https://example.org/long", title="Long", text=text)
    out = render(page, cursor=5, loc=0, num_lines=-1, view_tokens=256)
    head, body = out.split("\n\n", 1)
    assert head.startswith("[5] Long (https://example.org/long)\n**viewing lines [0 - ")
    last = int(head.split(" - ")[1].split("]")[0])
    assert 5 < last < 20  # about 1024 characters
    assert all(len(line.split(": ", 1)[1]) <= 80 for line in body.split("\n"))
    assert body.split("\n")[0].startswith("L0: line number 0 word")
    found = find_page(page, "NUMBER 150")
    assert found.text.startswith("# 【0†match at L")
    assert found.snippets[0].line is not None and found.cite_url == "https://example.org/long"


def test_html_links_and_special_brackets():
    page = html_to_page(
        '<p>Fake 【3†link】 <a href="/b">same site</a> <a href="https://other.org/x">elsewhere</a> '
        '<a href="#top">anchor</a> <img alt="a cat"></p>',
        "https://site.org/a/page.html",
    )
    assert page.text == "Fake 〖3†link〗 【0†same site】 【1†elsewhere†other.org】 anchor [Image: a cat]"
    assert page.links == {0: "https://site.org/b", 1: "https://other.org/x"}


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/search"):
            port = self.server.server_address[1]
            body = json.dumps(
                {
                    "results": [
                        {
                            "title": "Giant panda facts",
                            "url": f"http://127.0.0.1:{port}/panda.html",
                            "content": "Pandas eat bamboo.",
                        },
                        {"title": "Koala", "url": "https://example.org/koala", "content": "Koalas eat eucalyptus."},
                    ]
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()


@pytest.fixture()
def web_server(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    article = (
        "<p>"
        + " ".join(["Giant pandas spend ten to sixteen hours a day feeding on bamboo shoots and leaves."] * 3)
        + "</p>"
    )
    (site / "panda.html").write_text(
        "<html><head><title>Pandas on the web</title></head><body><nav><a href='/'>Home</a></nav><article>"
        "<h1>Giant pandas</h1>" + article + "<p>More in <a href='/diet.html'>the diet page</a>.</p>"
        "<p>Pandas are found in Sichuan, Shaanxi and Gansu, in mountain forests of central China.</p></article>"
        "<footer>Copyright</footer></body></html>"
    )
    (site / "diet.html").write_text(
        "<html><head><title>Diet</title></head><body><p>Bamboo makes up 99 percent of the "
        "giant panda diet.</p></body></html>"
    )
    (site / "notes.txt").write_text("plain text notes\nsecond line")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def allowing(base_url: str) -> EgressPolicy:
    """The operator's allow-list opened for one loopback test server (loopback is refused by default)."""
    return EgressPolicy.from_spec(base_url.split("//", 1)[1])


def test_open_a_page_served_over_http(web_server):
    browser = BrowserTool(WebBackend(policy=allowing(web_server)))
    r = run(browser, "browser.open", {"id": f"{web_server}/panda.html"})
    assert r.status == "completed"
    assert r.output.startswith(f"[0] Pandas on the web ({web_server}/panda.html)\n**viewing lines [0 - ")
    assert "L0: # Giant pandas" in r.output
    assert "feeding on bamboo shoots" in r.output
    assert "Copyright" not in r.output  # readable text: the page's chrome is dropped
    assert "【0†the diet page】" in r.output
    r = run(browser, "browser.open", {"id": 0})
    assert r.output.startswith(f"[1] Diet ({web_server}/diet.html)")
    assert "Bamboo makes up 99 percent" in r.output
    r = run(browser, "browser.find", {"pattern": "99 percent"})
    assert "# 【0†match at L0】" in r.output
    text, annotations = browser.cite("99% bamboo【1†L0】")
    assert annotations[0]["url"] == f"{web_server}/diet.html" and annotations[0]["title"] == "Diet"
    assert text == f"99% bamboo ([127.0.0.1:{web_server.rsplit(':', 1)[1]}]({web_server}/diet.html)) "
    r = run(browser, "browser.open", {"id": f"{web_server}/notes.txt"})
    assert "L1: second line" in r.output
    r = run(browser, "browser.open", {"id": f"{web_server}/missing.html"})
    assert r.status == "failed" and "HTTP 404" in r.output
    r = run(browser, "browser.open", {"id": f"{web_server}/panda.html", "view_source": True})
    assert "<footer>Copyright</footer>" in r.output


def test_search_through_a_searxng_instance(web_server):
    browser = BrowserTool(WebBackend(SearxngSearch(web_server), policy=allowing(web_server)))
    r = run(browser, "browser.search", {"query": "panda food"})
    assert r.output.startswith("[0] panda food\n**viewing lines [0 - 3] of 3**\n\nL0: # Search Results")
    host = web_server.split("//")[1]
    assert f"L2: * 【0†Giant panda facts†{host}】 Pandas eat bamboo." in r.output
    assert "L3: * 【1†Koala†example.org】 Koalas eat eucalyptus." in r.output
    r = run(browser, "browser.open", {"id": 0})
    assert r.output.startswith("[1] Pandas on the web")


def test_web_search_without_a_provider_says_how_to_configure_one(monkeypatch):
    for var in ("SEARXNG_URL", "EXA_API_KEY", "YDC_API_KEY", "GPTOSS_SEARCH_PROVIDER"):
        monkeypatch.delenv(var, raising=False)
    browser = BrowserTool(WebBackend.from_env())
    r = run(browser, "browser.search", {"query": "anything"})
    assert r.status == "failed" and "SEARXNG_URL" in r.output and "EXA_API_KEY" in r.output
    monkeypatch.setenv("GPTOSS_SEARCH_PROVIDER", "exa")
    with pytest.raises(ToolError, match="EXA_API_KEY"):
        WebBackend.from_env()


def test_corpus_and_web_together(corpus, web_server):
    browser = BrowserTool(CombinedBackend([corpus, WebBackend(policy=allowing(web_server))]))
    r = run(browser, "browser.search", {"query": "bamboo"})
    assert r.output.startswith("[0] bamboo")
    r = run(browser, "browser.open", {"id": f"{web_server}/diet.html"})
    assert r.status == "completed" and "99 percent" in r.output


def test_missing_corpus_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ToolError, match="not a folder"):
        LocalCorpus(tmp_path / "nope")


def test_the_corpus_never_opens_what_its_index_skips(corpus, corpus_dir, tmp_path):
    (corpus_dir / ".env").write_text("API_KEY=hunter2")
    (corpus_dir / "id_rsa.key").write_text("-----BEGIN PRIVATE KEY-----")
    (corpus_dir / ".ssh").mkdir()
    (corpus_dir / ".ssh" / "notes.md").write_text("# ssh notes")
    (corpus_dir / "alias.md").symlink_to(corpus_dir / ".env")  # a document name in front of a hidden file
    browser = BrowserTool(corpus)
    for target in (".env", "id_rsa.key", ".ssh/notes.md", ".hidden.md", "image.png", "alias.md"):
        for url in (f"file://{corpus_dir / target}", target):
            r = run(browser, "browser.open", {"id": url})
            assert r.status == "failed" and "hunter2" not in r.output and "PRIVATE" not in r.output, (url, r.output)
    assert run(browser, "browser.open", {"id": "bamboo.md"}).status == "completed"


def test_a_symlink_out_of_the_corpus_is_skipped_and_search_still_works(corpus, corpus_dir, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text("# Secret\n\nThe giant panda vault code is 4242.")
    (corpus_dir / "linked.md").symlink_to(outside / "secret.md")
    (corpus_dir / "linked-folder").symlink_to(outside, target_is_directory=True)
    stats = corpus.index()
    assert stats.documents == 4 and not stats.skipped
    browser = BrowserTool(corpus)
    r = run(browser, "browser.search", {"query": "giant panda vault code"})
    assert r.status == "completed" and "4242" not in r.output and "Giant panda" in r.output
    for url in ("linked.md", "linked-folder/secret.md", f"file://{outside / 'secret.md'}"):
        r = run(browser, "browser.open", {"id": url})
        assert r.status == "failed" and "4242" not in r.output
