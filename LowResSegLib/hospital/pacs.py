"""DICOMweb in and out: segment each PACS study's FLAIR and store its DICOM-SEG back (``lowresseg pacs``).

In a hospital the images sit in a PACS, so this module talks to it the standard way: QIDO-RS to
search, WADO-RS to retrieve, STOW-RS to store. Each study found is one :class:`StudyJob`:

1. its series are listed and their headers read (WADO-RS metadata: no pixels);
2. the series to read is chosen by the folder rule (:func:`LowResSegLib.images.dicomread.choose_series`,
   docs/dicom.md); a study where it cannot choose is refused with the same reason;
3. a study whose chosen series already has a LowResSeg SEG of this model version is skipped
   (``force`` adds a new SEG; nothing in the PACS is ever replaced or deleted);
4. the series' instances are retrieved into a private temporary folder, removed whatever happens;
5. :class:`LowResSegLib.workflow.run.SegmentationRun` (all or nothing) writes a DICOM-SEG there;
6. the SEG is stored with STOW-RS under its own study, and the server's answer is checked.

The client sends only GET and POST. Each try of a GET has a deadline for the whole exchange (connect
and the complete answer, not per byte: a server that trickles cannot hang it) and is retried; a study
has a deadline for all its transfers. A store is sent once and has its own deadline; a store whose
answer or check was lost is looked for in the study before it is reported (``unverified`` with its
UIDs when the server cannot be asked), and a second one would add a second SEG. Credentials come from a file or an environment variable
(:func:`load_auth`), travel only in the Authorization header, and are scrubbed from every message.
Needs ``requests`` and pydicom (the ``[dicom]`` extra). Python 3.9+.
"""

import base64
import os
import re
import secrets
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional
from urllib.parse import quote, urlsplit

__all__ = ["PacsError", "Auth", "load_auth", "PacsClient", "StoreResult", "StudyJob", "store_seg", "run_pacs",
           "AUTH_ENV", "REPORT_FIELDS"]

AUTH_ENV = "LOWRESSEG_PACS_AUTH"  # read when neither an auth file nor another variable is named
REPORT_FIELDS = ["study", "patient_id", "study_date", "status", "message", "series", "series_description",
                 "volume_ml", "review_score", "review", "seconds", "warnings", "seg_series", "seg_instance"]
# review_score, review: an ensemble model's disagreement score and flag (LowResSegLib.inference.ensemble)
_RETRY_STATUS = (429, 502, 503, 504)
_NOT_IMAGES = ("SR", "PR", "KO", "DOC")  # series modalities whose headers are not worth fetching
_PAGE = 100  # QIDO results asked for per request
_DICOM_PART = 'multipart/related; type="application/dicom"'
_FAILURES = {0xA700: "out of resources", 0xA900: "data set does not match its SOP class",
             0xC000: "cannot understand", 0xC122: "transfer syntax not supported", 0x0110: "processing failure",
             0x0122: "SOP class not supported", 0x0111: "duplicate SOP instance", 0xA770: "refused"}


class PacsError(RuntimeError):
    """A DICOMweb exchange failed; the message says why and what to do, and holds no credential."""


class _Overdue(Exception):
    """A request passed its deadline; the thread that sent it is left to end on its own."""


class StoreUnconfirmed(PacsError):
    """A SEG was sent but the server's answer, or the check that it holds it, was lost.

    ``sop_uid`` / ``series_uid`` name it; it may well be stored (the next run looks for it first).
    """

    def __init__(self, message, series_uid, sop_uid):
        PacsError.__init__(self, message)
        self.series_uid, self.sop_uid = series_uid, sop_uid


# --------------------------------------------------------------------------- credentials


class Auth(object):
    """HTTP basic (``USER:PASSWORD``) or bearer (``bearer TOKEN``) credentials; never shown.

    A requests auth hook: it sets the Authorization header of each request it is given.
    """

    def __init__(self, scheme: str, secret: str, source: str):
        self.scheme, self._secret, self.source = scheme, secret, source

    @classmethod
    def parse(cls, text: str, source: str = "the credentials") -> "Auth":
        """``USER:PASSWORD``, ``basic USER:PASSWORD`` or ``bearer TOKEN`` (one line)."""
        text = (text or "").strip()
        word, _, rest = text.partition(" ")
        if "\n" in text or not text:
            raise PacsError("%s must hold one line, 'USER:PASSWORD' or 'bearer TOKEN'" % source)
        if word.lower() == "bearer" and rest.strip():
            return cls("Bearer", rest.strip(), source)
        if word.lower() == "basic" and ":" in rest:
            text = rest.strip()
        if ":" in text and not text.startswith(":"):
            return cls("Basic", text, source)
        raise PacsError("%s holds neither 'USER:PASSWORD' nor 'bearer TOKEN'; fix it" % source)

    def header(self) -> str:
        if self.scheme == "Bearer":
            return "Bearer " + self._secret
        return "Basic " + base64.b64encode(self._secret.encode("utf-8")).decode("ascii")

    def __call__(self, request):
        request.headers["Authorization"] = self.header()
        return request

    def scrub(self, text: str) -> str:
        """``text`` with every form of the secret (4 characters or more) replaced by ``***``."""
        forms = [self._secret, self.header(), self.header().split(" ", 1)[1]]
        if self.scheme == "Basic":
            forms.append(self._secret.split(":", 1)[1])
        for form in sorted(set(f for f in forms if len(f) >= 4), key=len, reverse=True):
            text = text.replace(form, "***")
        return text

    def __repr__(self) -> str:
        return "Auth(%s, from %s)" % (self.scheme.lower(), self.source)


def load_auth(path: Optional[str] = None, env: Optional[str] = None) -> Optional[Auth]:
    """Credentials from the file ``path``, the environment variable ``env``, else ``$LOWRESSEG_PACS_AUTH``."""
    if path and env:
        raise PacsError("give the credentials once: an auth file or an environment variable, not both")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                return Auth.parse(f.read(), "the auth file %s" % path)
        except OSError as exc:
            raise PacsError("cannot read the auth file %s (%s)" % (path, exc.strerror or type(exc).__name__))
    if env:
        if not os.environ.get(env):
            raise PacsError("the environment variable %s is not set; put 'USER:PASSWORD' or 'bearer TOKEN' in it"
                            % env)
        return Auth.parse(os.environ[env], "the environment variable %s" % env)
    if os.environ.get(AUTH_ENV):
        return Auth.parse(os.environ[AUTH_ENV], "the environment variable %s" % AUTH_ENV)
    return None


# --------------------------------------------------------------------------- the client


class StoreResult(object):
    """What a STOW-RS store kept: the SEG's UIDs, and where the server says it can be retrieved."""

    def __init__(self, study_uid: str, series_uid: str, sop_uid: str, retrieve_url: str = ""):
        self.study_uid, self.series_uid, self.sop_uid, self.retrieve_url = study_uid, series_uid, sop_uid, retrieve_url


def _datasets(items: List[Dict[str, Any]]) -> list:
    """DICOM JSON objects as pydicom Datasets, bulk data left out (headers are all we read)."""
    from pydicom import Dataset

    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items()
                    if not (isinstance(v, dict) and ("BulkDataURI" in v or "InlineBinary" in v))}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    return [Dataset.from_json(strip(item)) for item in items]


def _parts(response) -> List[bytes]:
    """The bodies of a multipart/related answer (WADO-RS), or the body of a single application/dicom."""
    ctype = response.headers.get("Content-Type", "")
    if ctype.lower().startswith("application/dicom"):
        return [response.content]
    m = re.search(r'boundary="?([^";,]+)"?', ctype, re.I)
    if not ctype.lower().startswith("multipart/related") or not m:
        raise PacsError("the server answered %r instead of DICOM instances" % ctype[:80])
    parts = []
    for chunk in (b"\r\n" + response.content).split(b"\r\n--" + m.group(1).encode("latin-1"))[1:]:
        if chunk.startswith(b"--"):
            break
        _, sep, body = chunk.partition(b"\r\n\r\n")
        if sep:
            parts.append(body)
    return parts


class PacsClient(object):
    """A DICOMweb server at ``url`` (its root, e.g. ``http://host:8042/dicom-web``).

    ``auth``: an :class:`Auth` or None. TLS is always verified, against ``ca_bundle`` when given.
    Each try of a GET must be over, answer and all, within ``timeout`` s; it is retried ``retries``
    times (connection failures, timeouts and HTTP 429/502/503/504, after ``backoff``, 2x ``backoff``
    ... s). A store is sent once and must be answered within ``store_timeout`` s. ``deadline``
    (a ``time.monotonic()`` value, or None) bounds every request of the current study.
    """

    def __init__(self, url: str, auth: Optional[Auth] = None, ca_bundle: Optional[str] = None,
                 timeout: float = 30.0, retries: int = 3, backoff: float = 1.0, store_timeout: float = 300.0):
        try:
            import requests
        except ImportError:
            raise PacsError('DICOMweb needs the optional extra: pip install "LowResSegLib[dicom]" (requests)')

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PacsError("the DICOMweb URL must look like https://host/dicom-web (got %r)"
                            % (parts.scheme + "://" + (parts.hostname or "") + parts.path))
        if parts.username or parts.password:  # they would end in logs, shell history and error messages
            raise PacsError("the DICOMweb URL holds credentials; remove them and put 'USER:PASSWORD' in an auth file "
                            "(--auth-file) or an environment variable (--auth-env, default %s)" % AUTH_ENV)
        if ca_bundle and not os.path.isfile(ca_bundle):
            raise PacsError("the CA bundle %s does not exist; pass the PEM file of the server's CA" % ca_bundle)
        self.url, self.auth, self.host = url.rstrip("/"), auth, parts.netloc
        self.verify = ca_bundle or True
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        self.store_timeout = float(store_timeout)
        if self.timeout <= 0 or self.store_timeout <= 0:
            raise PacsError("timeouts must be more than 0 s")
        self.deadline, self.deadline_text = None, ""
        self.session = requests.Session()

    def close(self) -> None:
        self.session.close()

    # ---------------------------------------------------------------- transport

    def _error(self, message: str) -> PacsError:
        return PacsError(self.auth.scrub(message) if self.auth else message)

    def _limit(self, seconds: float, what: str) -> float:
        """``seconds``, cut to what is left of the study's deadline (an error when nothing is)."""
        if self.deadline is None:
            return seconds
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self._error("%s: %s" % (what, self.deadline_text))
        return min(seconds, left)

    def _bounded(self, send, limit: float):
        """``send()`` in a helper thread that must be done within ``limit`` s, answer and all.

        requests' own timeout is per socket operation, so a server that sends a byte every few
        seconds would hold it for ever; past the limit the exchange is abandoned (its thread ends
        when the socket times out) and the next requests use a fresh connection pool.
        """
        import requests

        box = {}

        def run():
            try:
                box["response"] = send(self.session)
            except BaseException as exc:  # handed to the caller's thread
                box["error"] = exc

        worker = threading.Thread(target=run, name="lowresseg-pacs-request", daemon=True)
        worker.start()
        worker.join(limit)
        if worker.is_alive():
            stuck, self.session = self.session, requests.Session()
            threading.Thread(target=lambda: (worker.join(), stuck.close()), daemon=True).start()
            raise _Overdue()
        if "error" in box:
            raise box["error"]
        return box["response"]

    def _transport_error(self, exc: Exception, what: str) -> PacsError:
        import requests

        if isinstance(exc, requests.exceptions.SSLError):
            if "CERTIFICATE_VERIFY_FAILED" in str(exc) or "certificate" in str(exc).lower():
                return self._error("%s: the TLS certificate of %s could not be verified; give the PEM file of its "
                                   "CA (lowresseg pacs --ca-bundle; for Slicer, set REQUESTS_CA_BUNDLE to it "
                                   "before starting Slicer); verification is never skipped" % (what, self.host))
            return self._error("%s: TLS with %s failed; check that the URL's scheme and port serve HTTPS"
                               % (what, self.host))
        if isinstance(exc, (requests.Timeout, _Overdue)):
            return self._error("%s: %s did not answer within %.0f s; the server may be overloaded (try --timeout)"
                               % (what, self.host, self.timeout))
        text = str(exc)
        reason = ("connection refused" if "refused" in text.lower() else "name not resolved" if "resolve" in text
                  else "connection lost" if "aborted" in text.lower() or "reset" in text.lower() else "no connection")
        return self._error("%s: cannot reach %s (%s); check the URL and that the server runs" % (what, self.host,
                                                                                               reason))

    def _check(self, response, what: str) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        source = self.auth.source if self.auth else None
        if status == 401:
            hint = ("the server refused the credentials from %s; check them" % source if source else
                    "the server wants credentials: give --auth-file or --auth-env")
        elif status == 403:
            hint = "the credentials%s are not allowed to do this" % (" from %s" % source if source else "")
        elif status == 404:
            hint = "not found; check that the URL is the server's DICOMweb root (e.g. http://host:8042/dicom-web)"
        elif status in (400, 405) and what == "searching studies":
            hint = ("the server does not take a DICOMweb search at %s; check that the URL is its DICOMweb root "
                    "(for Orthanc it ends in /dicom-web, e.g. http://host:8042/dicom-web)" % self.url)
        else:
            body = re.sub(r"\s+", " ", response.text or "").strip()[:200]
            hint = "the server answered %s" % (body or response.reason or "an error")
        raise self._error("%s: %s (HTTP %d)" % (what, hint, status))

    def _get(self, path: str, what: str, params: Optional[Dict[str, Any]] = None,
             accept: str = "application/dicom+json"):
        import requests

        failure, started, overdue = None, time.monotonic(), 0
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.backoff * 2 ** (attempt - 1), self._limit(3600.0, what)))
            limit = self._limit(self.timeout, what)
            try:
                response = self._bounded(lambda session: session.get(
                    self.url + path, params=params, headers={"Accept": accept}, auth=self.auth, verify=self.verify,
                    timeout=limit), limit)
            except requests.exceptions.SSLError as exc:
                raise self._transport_error(exc, what)
            except _Overdue:
                overdue += 1
                failure = None
                continue
            except (requests.ConnectionError, requests.Timeout) as exc:
                failure = self._transport_error(exc, what)
                continue
            if response.status_code in _RETRY_STATUS and attempt < self.retries:
                continue
            self._check(response, what)
            return response
        if failure is None or overdue:
            raise self._error("%s: %s did not send its whole answer within %.0f s (%d %s in %.0f s in all); the "
                              "server may be overloaded or the network slow (try --timeout)"
                              % (what, self.host, self.timeout, self.retries + 1,
                                 "try" if self.retries == 0 else "tries", time.monotonic() - started))
        raise failure

    def _json(self, path: str, what: str, params: Optional[Dict[str, Any]] = None) -> list:
        response = self._get(path, what, params)
        if response.status_code == 204 or not response.content.strip():
            return []
        try:
            return _datasets(response.json())
        except (ValueError, TypeError, KeyError, AttributeError):
            raise self._error("%s: the server's answer is not DICOM JSON; check that the URL is the server's DICOMweb "
                              "root (for Orthanc it ends in /dicom-web)" % what)

    # ---------------------------------------------------------------- QIDO-RS / WADO-RS / STOW-RS

    def search_studies(self, filters: Dict[str, str]) -> list:
        """Studies matching the QIDO-RS ``filters`` (e.g. PatientID, StudyDate "20240101-20240131")."""
        found, offset = [], 0
        while True:
            page = self._json("/studies", "searching studies", dict(filters, limit=_PAGE, offset=offset))
            found.extend(page)
            if len(page) < _PAGE:
                return found
            offset += len(page)

    def search_series(self, study: str) -> list:
        return self._json("/studies/%s/series" % quote(study), "listing the series of study %s" % study)

    def series_metadata(self, study: str, series: str) -> list:
        """The instance headers of a series (pixels left out)."""
        return self._json("/studies/%s/series/%s/metadata" % (quote(study), quote(series)),
                          "reading the headers of series %s" % series)

    def retrieve_instance(self, study: str, series: str, sop: str, path: str) -> None:
        """Write one instance (as stored: ``transfer-syntax=*``) to ``path``."""
        what = "retrieving instance %s" % sop
        response = self._get("/studies/%s/series/%s/instances/%s" % (quote(study), quote(series), quote(sop)), what,
                             accept=_DICOM_PART + "; transfer-syntax=*")
        parts = _parts(response)
        if len(parts) != 1:
            raise self._error("%s: the server sent %d instances instead of 1" % (what, len(parts)))
        with open(path, "wb") as f:
            f.write(parts[0])

    def store(self, path: str) -> StoreResult:
        """STOW-RS the DICOM file ``path`` into its study; raises unless the server says it kept it."""
        import pydicom
        import pydicom.errors
        import requests
        from pydicom import Dataset

        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
        except (pydicom.errors.InvalidDicomError, AttributeError, ValueError) as exc:
            raise PacsError("%s is not a DICOM instance with study, series and instance UIDs (%s); store a SEG that "
                            "LowResSeg wrote" % (path, str(exc).splitlines()[0][:100] if str(exc) else "unreadable"))
        what = "storing %s in study %s" % (os.path.basename(path), study)
        boundary = "lowresseg-" + secrets.token_hex(12)
        with open(path, "rb") as f:
            body = b"".join([b"--", boundary.encode(), b"\r\nContent-Type: application/dicom\r\n\r\n", f.read(),
                             b"\r\n--", boundary.encode(), b"--\r\n"])
        headers = {"Content-Type": '%s; boundary="%s"' % (_DICOM_PART, boundary), "Accept": "application/dicom+json"}
        limit = self._limit(self.store_timeout, what)
        try:
            response = self._bounded(lambda session: session.post(
                self.url + "/studies/%s" % quote(study), data=body, headers=headers, auth=self.auth,
                verify=self.verify, timeout=(min(self.timeout, limit), limit)), limit)
        except (requests.ConnectionError, requests.Timeout, _Overdue) as exc:
            if isinstance(exc, (requests.exceptions.ConnectTimeout, requests.exceptions.SSLError)) or \
                    "refused" in str(exc).lower():
                raise self._transport_error(exc, what)  # never sent
            if isinstance(exc, _Overdue):
                reason = "no answer within %.0f s (--store-timeout)" % limit
            else:
                reason = self._transport_error(exc, what).args[0].split(": ", 1)[-1].split(";")[0]
            raise StoreUnconfirmed(self._error("%s: the SEG was sent, but %s" % (what, reason)).args[0], series, sop)
        answer = None
        try:
            answer = Dataset.from_json(response.json()) if response.content.strip() else None
        except (ValueError, TypeError, AttributeError):
            pass
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            reasons = []
            for item in failed:
                code = item.get("FailureReason")
                reasons.append("0x%04X %s" % (int(code), _FAILURES.get(int(code), "")) if code is not None else "?")
            raise self._error("%s: the server refused the SEG (failure reason %s, HTTP %d); see the server's log"
                              % (what, ", ".join(r.strip() for r in reasons), response.status_code))
        self._check(response, what)
        kept = [str(i.get("ReferencedSOPInstanceUID")) for i in (answer.get("ReferencedSOPSequence") or [])] \
            if answer is not None else []
        if answer is not None and sop not in kept:
            raise self._error("%s: the server did not store the SEG (HTTP %d, listed neither as stored nor as "
                              "failed): a rule or filter on the server may refuse it; see the server's log"
                              % (what, response.status_code))
        # a success answer is not proof: Orthanc answers so for an instance its filter dropped
        try:
            held = self.holds(study, series, sop)
        except PacsError as exc:
            raise StoreUnconfirmed("%s: the server answered that it stored the SEG, but checking it failed (%s)"
                                   % (what, str(exc).split(": ", 1)[-1]), series, sop)
        if not held:
            raise self._error("%s: the server answered that it stored the SEG, but does not hold it: a rule or filter "
                              "on the server dropped it; see the server's log" % what)
        url = str(answer.get("RetrieveURL", "") or "") if answer is not None else ""
        return StoreResult(study, series, sop, url)

    def holds(self, study: str, series: str, sop: str) -> bool:
        """Whether the server holds the instance ``sop`` (QIDO-RS); raises PacsError when it cannot be asked."""
        found = self._json("/studies/%s/series/%s/instances" % (quote(study), quote(series)),
                           "checking the stored SEG", {"SOPInstanceUID": sop})
        return any(_text(ds, "SOPInstanceUID") == sop for ds in found)


def store_seg(url: str, path: str, credentials: Optional[str] = None, ca_bundle: Optional[str] = None,
              timeout: float = 30.0) -> StoreResult:
    """Store one DICOM-SEG file in its study on the DICOMweb server ``url`` (the Slicer export step).

    ``credentials``: ``USER:PASSWORD`` or ``bearer TOKEN`` as the user typed it, or None.
    Raises :class:`PacsError` (no credential in its text) unless the server kept the SEG.
    """
    client = PacsClient(url, Auth.parse(credentials, "the stored credentials") if credentials else None,
                        ca_bundle, timeout=timeout)
    try:
        return client.store(path)
    finally:
        client.close()


# --------------------------------------------------------------------------- one study


def _text(ds, key: str) -> str:
    value = ds.get(key)
    return str(value).strip() if value is not None else ""


class StudyJob(object):
    """One study of the worklist; :meth:`plan` chooses and checks, :meth:`run` segments and stores.

    ``row`` (a report row) says what happened; its ``status`` is ``planned``, ``refused`` (no
    series to read by the rule), ``skipped`` (a SEG of this model version is there), ``done`` or
    ``failed``.
    """

    def __init__(self, client: PacsClient, engine, study, force: bool = False, series_uid: Optional[str] = None,
                 accept_unknown_contrast: bool = False):
        self.client, self.engine, self.force, self.series_uid = client, engine, force, series_uid
        self.accept_unknown_contrast = accept_unknown_contrast
        self.study = _text(study, "StudyInstanceUID")
        self.row = {"study": self.study, "patient_id": _text(study, "PatientID"),
                    "study_date": _text(study, "StudyDate"), "status": "planned", "message": ""}
        self.chosen, self.note = None, None

    def plan(self) -> bool:
        """Choose the series and look for an earlier SEG; True when there is something to do."""
        from LowResSegLib.images import dicomread as dr
        from LowResSegLib.results.dicomseg import software_versions
        from LowResSegLib.workflow.run import card_contrast

        headers, segs = [], []
        for s in self.client.search_series(self.study):
            if _text(s, "Modality") in _NOT_IMAGES:
                continue
            for ds in self.client.series_metadata(self.study, _text(s, "SeriesInstanceUID")):
                (segs if _text(ds, "Modality") == "SEG" else headers).append((_text(ds, "SOPInstanceUID"), ds))
        series, _ = dr.group_series(headers)
        contrast = card_contrast(self.engine.card)
        try:
            self.chosen = dr.choose_series(series, contrast, self.series_uid, where="the study")
        except dr.DicomReadError as exc:
            self.row.update(status="refused", message=str(exc).replace("pass --series UID", "pass --study UID "
                                                                           "--series UID"))
            return False
        refusal = None if self.series_uid else dr.contrast_refusal(self.chosen, contrast, self.accept_unknown_contrast)
        if refusal:  # an unattended run never puts a FLAIR model's SEG on a series that is not a FLAIR
            self.row.update(status="refused", series=self.chosen.uid, series_description=self.chosen.description,
                            message="the study's %sseries %s" % ("only " if len(series) == 1 else "",
                                                                 refusal.replace("pass --series UID",
                                                                                 "pass --study UID --series UID")))
            return False
        if len(series) > 1:
            self.note = "the study holds %d image series; read %s (the one that looks like %s)" % (
                len(series), self.chosen.label, contrast)
        self.row.update(series=self.chosen.uid, series_description=self.chosen.description)
        mine = software_versions(self.engine.card)
        earlier = [ds for _, ds in segs if _text(ds, "Manufacturer") == "LowResSeg"
                   and _text(ds, "SoftwareVersions") == mine
                   and any(_text(r, "SeriesInstanceUID") == self.chosen.uid
                           for r in (ds.get("ReferencedSeriesSequence") or []))]
        if earlier and not self.force:
            self.row.update(status="skipped", seg_series=_text(earlier[0], "SeriesInstanceUID"),
                            seg_instance=_text(earlier[0], "SOPInstanceUID"),
                            message="the series already has a SEG from %s (pass --force to add a new one)" % mine)
            return False
        return True

    def run(self, progress: bool = True) -> StoreResult:
        """Retrieve the chosen series into a temporary folder, segment it, store the SEG; the folder goes.

        The files are named by their SOP Instance UIDs, and a message about one names the instance, not
        the temporary file. A store whose answer or check was lost is looked for once more: found, it is
        ``done``; not askable, the row is ``unverified`` with the SEG's UIDs.
        """
        from tqdm import tqdm

        from LowResSegLib.workflow.run import SegmentationRun

        sops = list(dict.fromkeys(f.sop_uid for f in self.chosen.frames))
        with tempfile.TemporaryDirectory(prefix="lowresseg-pacs-") as tmp:
            folder = os.path.join(tmp, "series")
            os.mkdir(folder)
            try:
                for sop in tqdm(sops, desc="retrieve", unit="file", leave=False, disable=not progress):
                    self.client.retrieve_instance(self.study, self.chosen.uid, sop,
                                                  os.path.join(folder, _file_name(sop)))
                run = SegmentationRun(folder, dicom_seg_out=os.path.join(tmp, "seg.dcm"), series=self.chosen.uid,
                                      engine=self.engine)
                try:
                    run.run()
                finally:
                    if self.note:
                        run.warnings.insert(0, self.note)
                    self.row["warnings"] = _instances_named(" | ".join(run.warnings), folder, tmp)
            except (ValueError, OSError, RuntimeError) as exc:
                if isinstance(exc, PacsError):
                    raise
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise PacsError(_instances_named(text, folder, tmp))
            summary = run.summary()
            try:
                stored = self.client.store(run.dicom_seg_out)
            except StoreUnconfirmed as exc:
                stored = self._confirm(exc)
        self.row.update(status="done", message="", volume_ml=summary["volume_ml"], seconds=summary["seconds"],
                        review_score=summary["review_score"], review=summary["review"],
                        seg_series=stored.series_uid, seg_instance=stored.sop_uid)
        return stored

    def _confirm(self, exc: "StoreUnconfirmed") -> StoreResult:
        """A store whose answer or check was lost: ask once more whether the server holds the SEG."""
        deadline, self.client.deadline = self.client.deadline, None  # one last short question, whatever is left
        try:
            held = self.client.holds(self.study, exc.series_uid, exc.sop_uid)
        except PacsError as again:
            self.row.update(seg_series=exc.series_uid, seg_instance=exc.sop_uid)
            raise _Unverified("%s; asking again failed too (%s): the SEG may be stored, and the next run looks for it "
                              "before storing again" % (exc, str(again).split(": ", 1)[-1].split(";")[0]))
        finally:
            self.client.deadline = deadline
        if not held:
            raise PacsError("%s, and the server does not hold it; the next run tries again" % exc)
        return StoreResult(self.study, exc.series_uid, exc.sop_uid)


class _Unverified(PacsError):
    """The row's status is ``unverified``: the SEG (UIDs in the row) may be stored; nothing says it is not."""


def _file_name(sop: str) -> str:
    return re.sub(r"[^0-9.]", "_", sop)[:120] + ".dcm"


def _instances_named(text: str, folder: str, tmp: str) -> str:
    """A message about the retrieved files, with each file named by its SOP Instance UID."""
    text = re.sub(re.escape(folder) + r"/?([0-9.]+)\.dcm", r"instance \1", text)
    text = re.sub(r"(?<![0-9.])([0-9]+(?:\.[0-9]+){3,})\.dcm\b", r"instance \1", text)
    return text.replace(folder, "the retrieved series").replace(tmp, "the temporary folder")


# --------------------------------------------------------------------------- the worklist


def run_pacs(url: str, model: Optional[str] = None, filters: Optional[Dict[str, str]] = None,
             report: Optional[str] = None, auth: Optional[Auth] = None, ca_bundle: Optional[str] = None,
             force: bool = False, dry_run: bool = False, series_uid: Optional[str] = None,
             repository: Optional[str] = None, threads: int = 0, timeout: float = 30.0, retries: int = 3,
             progress: bool = True, engine=None, backoff: float = 1.0, store_timeout: float = 300.0,
             study_timeout: float = 1800.0, accept_unknown_contrast: bool = False) -> List[Dict[str, Any]]:
    """Segment every study matching ``filters`` on the server ``url``; returns one report row per study.

    ``report`` (a CSV, rewritten after every study; not written on a ``dry_run``) keeps rows of
    earlier runs for studies not found now. A failing study is recorded and the run goes on;
    a report that cannot be written (a full disk) is said in the row's ``report_error`` and the run
    goes on; a failure to search at all raises :class:`PacsError`. ``study_timeout``: seconds all
    the transfers of one study may take. A study whose series is not the model's contrast by its
    headers is refused (:func:`LowResSegLib.images.dicomread.contrast_refusal`) unless ``series_uid``
    picks it; one whose headers name no contrast, unless ``accept_unknown_contrast``.
    """
    from tqdm import tqdm

    from LowResSegLib.images import dicomread as dr
    from LowResSegLib.workflow.batch import read_report, write_report
    from LowResSegLib.inference.ensemble import open_engine

    if report and not dry_run and not os.path.isdir(os.path.dirname(os.path.abspath(report))):
        raise PacsError("the folder of the report %s does not exist; create it or pass another --report" % report)
    try:
        import highdicom  # noqa: F401  (the SEG writer: fail before the first study, not in each)
    except ImportError:
        raise PacsError('writing DICOM-SEG needs the optional extra: pip install "LowResSegLib[dicom]"')
    client = PacsClient(url, auth, ca_bundle, timeout=timeout, retries=retries, backoff=backoff,
                        store_timeout=store_timeout)
    scrub = auth.scrub if auth else (lambda text: text)
    try:
        filters = dict(filters or {})
        filters.setdefault("ModalitiesInStudy", "MR")
        studies = client.search_studies(filters)
        engine = engine or open_engine(model, repository, threads=threads)  # an ensemble, or one model
        rows = {} if dry_run or not report else read_report(report, key="study")
        out = []
        bar = tqdm(studies, desc="pacs", unit="study", disable=not progress)
        for study in bar:
            job = StudyJob(client, engine, study, force=force, series_uid=series_uid,
                           accept_unknown_contrast=accept_unknown_contrast)
            bar.set_postfix_str(job.study[-24:])
            client.deadline = time.monotonic() + study_timeout
            client.deadline_text = ("the study's transfers passed their deadline of %.0f s (--study-timeout)"
                                    % study_timeout)
            try:
                if job.plan():
                    if dry_run:
                        job.row["message"] = ("would retrieve %d file(s) of %s, segment them and store a SEG"
                                              % (len(set(f.sop_uid for f in job.chosen.frames)), job.chosen.label))
                    else:
                        job.run(progress)
            except (PacsError, dr.DicomReadError, ValueError, OSError, RuntimeError, MemoryError) as exc:
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                job.row.update(status="unverified" if isinstance(exc, _Unverified) else "failed",
                               message=scrub(text))
            finally:
                client.deadline = None
            out.append(job.row)
            if report and not dry_run:
                rows[job.study] = job.row
                try:
                    write_report(report, rows, REPORT_FIELDS)
                except OSError as exc:  # a full disk: said, and the other studies still run
                    job.row["report_error"] = scrub(str(exc))
        return out
    finally:
        client.close()
