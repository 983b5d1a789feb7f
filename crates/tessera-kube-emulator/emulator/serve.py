"""A Kubernetes API emulator for Tessera's end-to-end tests.

kmock's KubernetesEmulator serves discovery, errors and streaming; this subclass keeps the
objects itself and adds what kube-rs and Tessera's binaries rely on and kmock 0.8 leaves
out: resourceVersion (per object and per list, one counter for the whole server), uid and
creationTimestamp, watches that resume from a resourceVersion, JSON merge patch (RFC 7386)
and JSON patch, PUT, the /status subresource, 409 Conflict on a stale resourceVersion,
metadata.generation of workloads, graceful pod deletion (Terminating, then gone after the
grace period), finalizers, label and field selectors with equality terms, and bearer-token
checks.

Run: python serve.py --port-file FILE [--tls-port-file FILE --tls-cert PEM --tls-key PEM]
     [--token TOKEN]. The port files are written once the server listens.
"""

import argparse
import asyncio
import copy
import datetime
import os
import socket
import ssl
import sys
import uuid

import aiohttp.web
import jsonpatch
import kmock
from kmock._internal import parsing

# The resources served, with their discovery data taken from kmock's bundled copy.
SERVED = {
    ('', 'v1', 'nodes'): 'Node',
    ('', 'v1', 'namespaces'): 'Namespace',
    ('', 'v1', 'pods'): 'Pod',
    ('apps', 'v1', 'statefulsets'): 'StatefulSet',
    ('apps', 'v1', 'deployments'): 'Deployment',
    ('apps', 'v1', 'replicasets'): 'ReplicaSet',
    ('apps', 'v1', 'daemonsets'): 'DaemonSet',
    ('batch', 'v1', 'jobs'): 'Job',
    ('batch', 'v1', 'cronjobs'): 'CronJob',
    ('', 'v1', 'events'): 'Event',
    ('coordination.k8s.io', 'v1', 'leases'): 'Lease',
    ('events.k8s.io', 'v1', 'events'): 'Event',
}

# The custom resources of deploy/crds/ (cluster-scoped, with a /status subresource), as their
# CustomResourceDefinitions name them: (group, version, plural) -> (kind, singular, short names).
CUSTOM = {
    ('spiderpool.spidernet.io', 'v2beta1', 'spidersubnets'): ('SpiderSubnet', 'spidersubnet', {'ss'}),
    ('spiderpool.spidernet.io', 'v2beta1', 'spiderippools'): ('SpiderIPPool', 'spiderippool', {'sp'}),
    ('spiderpool.spidernet.io', 'v2beta1', 'spiderreservedips'): ('SpiderReservedIP', 'spiderreservedip', {'sr'}),
    ('crd.projectcalico.org', 'v1', 'ippools'): ('IPPool', 'ippool', set()),
    ('crd.projectcalico.org', 'v1', 'ipreservations'): ('IPReservation', 'ipreservation', set()),
}
SERVED.update({triple: kind for triple, (kind, _, _) in CUSTOM.items()})

# The namespaces every cluster starts with.
BUILT_IN_NAMESPACES = ('default', 'kube-node-lease', 'kube-public', 'kube-system')

# Resources whose main endpoint ignores changes to `status` (they have a /status subresource).
WITH_STATUS = {'nodes', 'namespaces', 'pods'} | {plural for (_, _, plural) in CUSTOM}

# API groups whose objects count their spec changes in metadata.generation (the workloads:
# `kubectl rollout status` compares it with status.observedGeneration).
WITH_GENERATION = {'apps'}

# Field selectors understood (equality and inequality only, as the real API server).
FIELD_PATHS = {
    'metadata.name': ('metadata', 'name'),
    'metadata.namespace': ('metadata', 'namespace'),
    'spec.nodeName': ('spec', 'nodeName'),
    'status.phase': ('status', 'phase'),
}


def parse_path(path, kmock_parse_path=parsing.parse_path):
    """kmock 0.8 reads `/api/v1/namespaces[/NAME[/status]]` as a namespace prefix with no
    resource (and fails on the bare list); these paths name the namespaces resource itself."""
    parts = path.strip('/').split('/')
    if parts[:3] == ['api', 'v1', 'namespaces'] and (len(parts) <= 4 or (len(parts) == 5 and parts[4] in ('status', 'finalize'))):
        name = parts[3] if len(parts) > 3 else None
        subresource = parts[4] if len(parts) > 4 else None
        return parsing.ParsedPath('', 'v1', 'namespaces', None, name, subresource)
    return kmock_parse_path(path)


# kmock's request parser looks the function up in its module on every request.
parsing.parse_path = parse_path


def now_rfc3339(offset_seconds=0):
    """UTC time in Kubernetes' format (whole seconds, trailing Z)."""
    moment = datetime.datetime.now(tz=datetime.timezone.utc) + datetime.timedelta(seconds=offset_seconds)
    return moment.strftime('%Y-%m-%dT%H:%M:%SZ')


def api_error(status, reason, message, name=None, kind=None):
    """A KubernetesError that kmock renders as a v1 Status; details stay small and typed."""
    details = {'name': name or '', 'kind': kind or ''}
    return kmock.KubernetesError(status=status, reason=reason, message=message, details=details)


def header(request, name):
    """A request header by case-insensitive name ('' when absent)."""
    return next((v for k, v in request.headers.items() if k.lower() == name.lower()), '')


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch: objects merge, null removes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def parse_selector(text, kind):
    """Equality terms `k=v`, `k==v`, `k!=v`, and `k` / `!k` (labels): a list of (key, op, value)."""
    terms = []
    for term in filter(None, (t.strip() for t in (text or '').split(','))):
        if '!=' in term:
            key, value = term.split('!=', 1)
            terms.append((key.strip(), '!=', value.strip()))
        elif '=' in term:
            key, value = term.replace('==', '=').split('=', 1)
            terms.append((key.strip(), '=', value.strip()))
        elif kind == 'label' and term.startswith('!'):
            terms.append((term[1:].strip(), 'absent', None))
        elif kind == 'label':
            terms.append((term, 'present', None))
        else:
            raise api_error(400, 'BadRequest', f'field selector term "{term}" is not key=value')
        if kind == 'field' and terms[-1][0] not in FIELD_PATHS:
            raise api_error(400, 'BadRequest', f'field label not supported: {terms[-1][0]}')
    return terms


def selector_matches(obj, labels_terms, field_terms):
    labels = obj.get('metadata', {}).get('labels') or {}
    for key, op, value in labels_terms:
        present = key in labels
        if (op == 'present' and not present) or (op == 'absent' and present):
            return False
        if op == '=' and labels.get(key) != value:
            return False
        if op == '!=' and present and labels.get(key) == value:
            return False
    for key, op, value in field_terms:
        section, field = FIELD_PATHS[key]
        actual = (obj.get(section) or {}).get(field) or ''
        if (op == '=') != (actual == value):
            return False
    return True


class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator with the object semantics of a real API server (see the module doc)."""

    def __attrs_post_init__(self):
        super().__attrs_post_init__()
        bundled = kmock.ResourcesArray()
        bundled.load_bundled()
        for (group, version, plural) in SERVED:
            key = kmock.resource(group, version, plural)
            if (group, version, plural) in CUSTOM:
                kind, singular, short_names = CUSTOM[(group, version, plural)]
                self.resources[key] = kmock.ResourceInfo(
                    namespaced=False, kind=kind, singular=singular, shortnames=short_names,
                    verbs={'get', 'list', 'watch', 'create', 'update', 'patch', 'delete'},
                    subresources={'status'})
            else:
                self.resources[key] = bundled[key]
        self.token = None
        self.revision = 0
        self.store = {}  # (resource triple, namespace or None, name) -> object
        self.history = []  # (revision, resource triple, event) for watches that resume
        self.watchers = set()  # (resource triple, asyncio.Queue)
        self.state_lock = asyncio.Lock()
        self.timers = {}  # object key -> asyncio.TimerHandle of a graceful deletion
        for namespace in BUILT_IN_NAMESPACES:
            self.create(None, ('', 'v1', 'namespaces'), {'metadata': {'name': namespace}})

    # ----- request routing -------------------------------------------------------------

    async def _handle(self, request):
        if self.token is not None:
            if header(request, 'Authorization') != f'Bearer {self.token}':
                raise api_error(401, 'Unauthorized', 'Unauthorized: a valid bearer token is required')
        triple = self.served(request)
        if triple is None or request.subresource not in (None, 'status'):
            # Discovery, /version and unknown paths: kmock's scaffold answers.
            return await kmock.RawHandler._handle(self, request)
        method = request.method.value
        if method == 'GET' and request.params.get('watch') == 'true':
            return await kmock.RawHandler._handle(self, request)  # -> self._serve_watch
        async with self.state_lock:
            body, status = self.dispatch(request, triple, method)
        return aiohttp.web.json_response(body, status=status)

    def served(self, request):
        if request.resource is None:
            return None
        triple = (request.resource.group, request.resource.version, request.resource.plural)
        return triple if triple in SERVED else None

    def dispatch(self, request, triple, method):
        if method == 'GET' and request.name is None:
            return self.list_objects(request, triple), 200
        if method == 'GET':
            return self.existing(request, triple), 200
        if method == 'POST' and request.name is None:
            return self.create(request, triple, self.body(request)), 201
        if method == 'PATCH' and request.name is not None:
            return self.patch(request, triple), 200
        if method == 'PUT' and request.name is not None:
            return self.replace(request, triple, self.body(request)), 200
        if method == 'DELETE' and request.name is not None:
            return self.delete(request, triple), 200
        raise api_error(405, 'MethodNotAllowed', f'{method} {request.url.path} is not supported')

    def body(self, request):
        if not isinstance(request.data, dict):
            raise api_error(400, 'BadRequest', 'the request body must be a JSON object')
        return copy.deepcopy(request.data)

    async def _serve_version(self, request):
        # kmock names the core group's version `/v1`; the real server says `v1`.
        result = await super()._serve_version(request)
        result['groupVersion'] = result['groupVersion'].lstrip('/')
        return result

    # ----- reads -----------------------------------------------------------------------

    def key(self, request, triple, name=None):
        namespace = request.namespace if self.namespaced(triple) else None
        return (triple, namespace, name or request.name)

    def namespaced(self, triple):
        return bool(self.resources[kmock.resource(*triple)].namespaced)

    def existing(self, request, triple):
        key = self.key(request, triple)
        if key not in self.store:
            plural = triple[2]
            raise api_error(404, 'NotFound', f'{plural} "{request.name}" not found', request.name, plural)
        return self.store[key]

    def list_objects(self, request, triple):
        labels = parse_selector(request.params.get('labelSelector'), 'label')
        fields = parse_selector(request.params.get('fieldSelector'), 'field')
        keys = sorted((k for k in self.store if k[0] == triple), key=lambda k: (k[1] or '', k[2]))
        items = [
            self.store[k] for k in keys
            if request.namespace is None or k[1] == request.namespace
            if selector_matches(self.store[k], labels, fields)
        ]
        version = triple[1] if not triple[0] else f'{triple[0]}/{triple[1]}'
        return {
            'apiVersion': version,
            'kind': f'{SERVED[triple]}List',
            'metadata': {'resourceVersion': str(self.revision)},
            'items': items,
        }

    # ----- writes ----------------------------------------------------------------------

    def record(self, triple, kind, obj):
        """Stamps a new resourceVersion on `obj`, keeps the event and hands it to watchers."""
        self.revision += 1
        obj.setdefault('metadata', {})['resourceVersion'] = str(self.revision)
        event = {'type': kind, 'object': copy.deepcopy(obj)}
        self.history.append((self.revision, triple, event))
        for (watched, queue) in list(self.watchers):
            if watched == triple:
                queue.put_nowait(event)

    def create(self, request, triple, obj):
        meta = obj.setdefault('metadata', {})
        if not meta.get('name') and meta.get('generateName'):
            meta['name'] = meta['generateName'] + uuid.uuid4().hex[:5]
        if not meta.get('name'):
            raise api_error(422, 'Invalid', 'metadata.name: Required value: name or generateName is required')
        if self.namespaced(triple):
            namespace = (request and request.namespace) or meta.get('namespace')
            if not namespace:
                raise api_error(422, 'Invalid', 'metadata.namespace: Required value')
            if meta.get('namespace') not in (None, namespace):
                raise api_error(400, 'BadRequest', 'the namespace of the object does not match the namespace of the URL')
            meta['namespace'] = namespace
        key = (triple, meta.get('namespace') if self.namespaced(triple) else None, meta['name'])
        if key in self.store:
            raise api_error(409, 'AlreadyExists', f'{triple[2]} "{meta["name"]}" already exists', meta['name'], triple[2])
        group, version = triple[0], triple[1]
        obj['apiVersion'] = f'{group}/{version}' if group else version
        obj['kind'] = SERVED[triple]
        meta['uid'] = str(uuid.uuid4())
        meta['creationTimestamp'] = now_rfc3339()
        if triple[0] in WITH_GENERATION:
            meta['generation'] = 1
        meta.pop('deletionTimestamp', None)
        meta.pop('resourceVersion', None)
        self.store[key] = obj
        self.record(triple, 'ADDED', obj)
        return obj

    def check_version(self, stored, obj):
        wanted = (obj.get('metadata') or {}).get('resourceVersion')
        current = stored['metadata']['resourceVersion']
        if wanted and wanted != current:
            name = stored['metadata']['name']
            raise api_error(
                409, 'Conflict',
                f'Operation cannot be fulfilled on {resource_name(stored)} "{name}": the object has been '
                'modified; please apply your changes to the latest version and try again',
                name, stored['kind'])

    def patch(self, request, triple):
        content_type = header(request, 'Content-Type').split(';')[0].strip()
        key = self.key(request, triple)
        if key not in self.store and content_type == 'application/apply-patch+yaml':
            return self.create(request, triple, self.body(request))  # server-side apply creates
        stored = self.existing(request, triple)
        if content_type == 'application/json-patch+json':
            if not isinstance(request.data, list):
                raise api_error(400, 'BadRequest', 'a JSON patch must be a JSON array of operations')
            try:
                changed = jsonpatch.apply_patch(stored, request.data, in_place=False)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                raise api_error(422, 'Invalid', f'the JSON patch cannot be applied: {e}')
        else:
            # Merge patch; strategic merge and apply patches are treated as merge patches.
            patch = self.body(request)
            self.check_version(stored, patch)
            changed = merge_patch(stored, patch)
        return self.store_change(request, triple, key, stored, changed)

    def replace(self, request, triple, obj):
        key = self.key(request, triple)
        stored = self.existing(request, triple)
        self.check_version(stored, obj)
        return self.store_change(request, triple, key, stored, obj)

    def store_change(self, request, triple, key, stored, changed):
        """Keeps what a client may not change, then stores `changed` if it differs."""
        if request.subresource == 'status':
            changed = dict(stored, status=changed.get('status'))
        elif triple[2] in WITH_STATUS and 'status' in stored:
            changed = dict(changed, status=stored['status'])
        elif triple[2] in WITH_STATUS:
            changed.pop('status', None)
        meta = changed.setdefault('metadata', {})
        for field in ('name', 'namespace', 'uid', 'creationTimestamp', 'resourceVersion',
                      'deletionTimestamp', 'deletionGracePeriodSeconds'):
            if field in stored['metadata']:
                meta[field] = stored['metadata'][field]
            else:
                meta.pop(field, None)
        changed['apiVersion'], changed['kind'] = stored['apiVersion'], stored['kind']
        if 'generation' in stored['metadata']:
            spec_changed = changed.get('spec') != stored.get('spec')
            meta['generation'] = stored['metadata']['generation'] + int(spec_changed)
        if changed == stored:
            return stored  # a no-op write keeps the resourceVersion and sends no event
        self.store[key] = changed
        self.record(triple, 'MODIFIED', changed)
        self.finish_deletion_if_released(key)
        return self.store.get(key, changed)

    def delete(self, request, triple):
        key = self.key(request, triple)
        stored = self.existing(request, triple)
        options = request.data if isinstance(request.data, dict) else {}
        preconditions = options.get('preconditions') or {}
        for field in ('uid', 'resourceVersion'):
            if preconditions.get(field) and preconditions[field] != stored['metadata'].get(field):
                raise api_error(409, 'Conflict', f'Precondition failed: {field} in precondition: '
                                f'{preconditions[field]}, {field} in object meta: {stored["metadata"].get(field)}',
                                stored['metadata']['name'], stored['kind'])
        grace = self.grace_period(request, triple, stored, options)
        if grace > 0:
            return self.mark_terminating(triple, key, stored, grace)
        if stored['metadata'].get('finalizers'):
            if not stored['metadata'].get('deletionTimestamp'):
                changed = copy.deepcopy(stored)
                changed['metadata']['deletionTimestamp'] = now_rfc3339()
                changed['metadata']['deletionGracePeriodSeconds'] = 0
                self.store[key] = changed
                self.record(triple, 'MODIFIED', changed)
            return self.store[key]
        return self.remove(key)

    def grace_period(self, request, triple, stored, options):
        """Only scheduled pods terminate gracefully; the period comes from the request, else
        the pod's spec (this emulator does not default it to 30 s as the real server does)."""
        if triple[2] != 'pods' or not (stored.get('spec') or {}).get('nodeName'):
            return 0
        for value in (options.get('gracePeriodSeconds'), request.params.get('gracePeriodSeconds'),
                      (stored.get('spec') or {}).get('terminationGracePeriodSeconds')):
            if value is not None and str(value).lstrip('-').isdigit():
                return max(int(value), 0)
        return 0

    def mark_terminating(self, triple, key, stored, grace):
        meta = stored['metadata']
        if meta.get('deletionTimestamp') and meta.get('deletionGracePeriodSeconds', 0) <= grace:
            return stored  # already terminating, and no sooner than asked
        changed = copy.deepcopy(stored)
        changed['metadata']['deletionTimestamp'] = now_rfc3339(grace)
        changed['metadata']['deletionGracePeriodSeconds'] = grace
        self.store[key] = changed
        self.record(triple, 'MODIFIED', changed)
        if key in self.timers:
            self.timers.pop(key).cancel()
        loop = asyncio.get_running_loop()
        self.timers[key] = loop.call_later(grace, lambda: asyncio.ensure_future(self.grace_ended(key)))
        return changed

    async def grace_ended(self, key):
        async with self.state_lock:
            self.timers.pop(key, None)
            self.finish_deletion_if_released(key)

    def finish_deletion_if_released(self, key):
        """An object marked for deletion goes once no finalizer and no grace period holds it."""
        obj = self.store.get(key)
        if obj is None or key in self.timers:
            return
        meta = obj['metadata']
        if meta.get('deletionTimestamp') and not meta.get('finalizers'):
            self.remove(key)

    def remove(self, key):
        obj = self.store.pop(key)
        if key in self.timers:
            self.timers.pop(key).cancel()
        self.record(key[0], 'DELETED', obj)
        return obj

    # ----- watches ---------------------------------------------------------------------

    async def _serve_watch(self, request):
        triple = self.served(request)
        labels = parse_selector(request.params.get('labelSelector'), 'label')
        fields = parse_selector(request.params.get('fieldSelector'), 'field')
        since = request.params.get('resourceVersion') or '0'
        timeout = min(int(request.params.get('timeoutSeconds') or 1800), 1800)
        queue = asyncio.Queue()
        async with self.state_lock:
            if since == '0':
                backlog = [{'type': 'ADDED', 'object': obj} for (t, _, _), obj in self.store.items() if t == triple]
            else:
                start = int(since) if since.isdigit() else 0
                backlog = [event for (rv, t, event) in self.history if t == triple and rv > start]
            watcher = (triple, queue)
            self.watchers.add(watcher)
        yield b''  # sends the headers now: a watch with nothing to say is still a watch

        def wanted(event):
            obj = event['object']
            meta = obj.get('metadata', {})
            if request.namespace is not None and meta.get('namespace') != request.namespace:
                return False
            if request.name is not None and meta.get('name') != request.name:
                return False
            return selector_matches(obj, labels, fields)

        try:
            for event in backlog:
                if wanted(event):
                    yield event
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    return
                try:
                    event = await asyncio.wait_for(queue.get(), remaining)
                except asyncio.TimeoutError:
                    return
                if wanted(event):
                    yield event
        finally:
            self.watchers.discard(watcher)


def resource_name(obj):
    """`pods`, `coordination.k8s.io leases`... as the real server names a resource in messages."""
    for (group, version, plural), kind in SERVED.items():
        if kind == obj.get('kind') and obj.get('apiVersion') == (f'{group}/{version}' if group else version):
            return f'{plural}.{group}' if group else plural
    return obj.get('kind', 'object')


def listen(host):
    """A listening socket on a free port: binding port 0 here means no port is ever raced for."""
    sock = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET)
    sock.bind((host, 0))
    sock.listen(128)
    return sock


def write_port(path, sock):
    port = sock.getsockname()[1]
    temporary = f'{path}.tmp'
    with open(temporary, 'w') as f:
        f.write(f'{port}\n')
    os.rename(temporary, path)  # the launcher never reads a half-written file


async def serve(args):
    async with Emulator() as emulator:
        emulator.token = args.token
        runner = aiohttp.web.ServerRunner(aiohttp.web.Server(emulator), handle_signals=False)
        await runner.setup()
        plain = listen(args.host)
        await aiohttp.web.SockSite(runner, plain).start()
        write_port(args.port_file, plain)
        if args.tls_port_file:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(args.tls_cert, args.tls_key)
            secure = listen(args.host)
            await aiohttp.web.SockSite(runner, secure, ssl_context=context).start()
            write_port(args.tls_port_file, secure)
        print('kube emulator listening', flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--host', default='127.0.0.1')
    parser.add_argument('--port-file', required=True, help='where to write the plain HTTP port')
    parser.add_argument('--tls-port-file', help='where to write the HTTPS port (needs --tls-cert/--tls-key)')
    parser.add_argument('--tls-cert', help='PEM certificate for HTTPS')
    parser.add_argument('--tls-key', help='PEM private key for HTTPS')
    parser.add_argument('--token', help='require this bearer token on every request')
    args = parser.parse_args()
    if args.tls_port_file and not (args.tls_cert and args.tls_key):
        parser.error('--tls-port-file needs --tls-cert and --tls-key')
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == '__main__':
    sys.exit(main())
