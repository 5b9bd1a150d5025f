# cython: language_level=3, auto_pickle=False
#
# The request context, compiled: its fields are declared in _context.pxd (read there why and how); the pure
# twin is sluice/_native/_pure_context.py, with the same fields, defaults and methods.
#
# Object fields as slots.  Cython gives each `public` field a property (a getset descriptor).  At import,
# install_members replaces the property of each object field by a CPython member descriptor (T_OBJECT_EX,
# what __slots__ makes) on the same C field, so that Python's reads and writes of it specialise
# (LOAD_ATTR_SLOT, STORE_ATTR_SLOT).  It needs no field names: it takes the properties Cython made from the
# declaration, tells an object field by its None on a new instance (a C field reads 0, 0.0 or False), and
# finds the field's offset by storing a marker object through the property into a blank instance and looking
# for the one pointer-sized word of the instance that holds it; a property whose field is not found exactly
# once is left as it is (slower, still correct).  The member descriptors take their names from Cython's table
# (static strings), and their definitions live as long as the module.  A context is not picklable (the twin
# is, by __slots__: nothing pickles one).

from cpython.mem cimport PyMem_Malloc
from cpython.object cimport PyObject
cimport cython

cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        const char* name
        int type
        Py_ssize_t offset
        int flags
        const char* doc
    ctypedef struct PyGetSetDef:
        const char* name
    ctypedef struct PyGetSetDescrObject:
        PyGetSetDef* d_getset
    ctypedef struct PyTypeObject:
        const char* tp_name
        Py_ssize_t tp_basicsize
        PyObject* tp_dict
    object PyDescr_NewMember(PyTypeObject* type, PyMemberDef* member)
    void PyType_Modified(PyTypeObject* type)
    int PyDict_SetItem(object d, object key, object value) except -1

cdef extern from "structmember.h":
    int T_OBJECT_EX

# On every response.  (No version banner: Granian's server header is "granian".)
SECURITY_HEADERS = (("x-content-type-options", "nosniff"),)


@cython.final
cdef class RequestContext:
    """What the gateway learns about one request on its way through its stages.

    The stages write it and read it (sluice.pipeline.stage); headers, metrics, traces and the
    access log read it at the end.  Its fields are declared in ext/_context.pxd, which the compiled
    metrics, access-log and accounting code cimports and reads directly.
    """

    def __init__(self, request_id, double started, route=""):
        settable(<PyObject*>self.request_id, self)  # the object fields written here (see _context.pxd)
        settable(<PyObject*>self.route, self)
        settable(<PyObject*>self.wire, self)
        settable(<PyObject*>self.security, self)
        settable(<PyObject*>self.method, self)
        settable(<PyObject*>self.path, self)
        self.request_id = request_id
        self.started = started
        self.route = route
        self.wire = "openai"
        self.overhead_s = self.ttfb_s = self.ttft_s = -1.0
        self.security = SECURITY_HEADERS
        self.method = self.path = ""
        self.tokens_in = self.tokens_out = -1

    def headers(self, *extra):
        """Our response headers: request id and the gateway's overhead so far (total minus upstream)."""
        cdef double elapsed = perf_counter() - self.started
        self.ttfb_s = elapsed
        self.overhead_s = elapsed - self.upstream_s
        headers = [("x-request-id", get(<PyObject*>self.request_id, self)),
                   ("x-sluice-overhead-ms", f"{self.overhead_s * 1000:.3f}"), *get(<PyObject*>self.security, self),
                   *extra]
        admission = get(<PyObject*>self.admission, self)
        if admission is not None:
            headers += admission.headers
        return headers


cdef PyMemberDef* MEMBERS = NULL  # the object fields' member descriptors (install_members)
cdef Py_ssize_t MEMBER_COUNT = 0


cdef int deleted(RequestContext ctx) except -1:
    cdef Py_ssize_t i
    cdef type cls = type(ctx)
    cdef str name = (<PyTypeObject*><PyObject*>cls).tp_name.decode("utf-8")
    for i in range(MEMBER_COUNT):
        if (<PyObject**>((<char*><PyObject*>ctx) + MEMBERS[i].offset))[0] == NULL:  # as Python says it:
            raise AttributeError(f"'{name}' object has no attribute '{MEMBERS[i].name.decode('ascii')}'")
    raise AttributeError(f"'{name}' object has a deleted field")  # not reached: only the members can be deleted


cdef Py_ssize_t find_word(object instance, PyObject* marker) noexcept:
    """The offset of the one pointer-sized word of ``instance`` that holds ``marker``; -1 if none or several."""
    cdef char* base = <char*><PyObject*>instance
    cdef type cls = type(instance)
    cdef Py_ssize_t at, found = -1, word = sizeof(PyObject*)
    for at in range(<Py_ssize_t>sizeof(PyObject), (<PyTypeObject*><PyObject*>cls).tp_basicsize - word + 1, word):
        if (<PyObject**>(base + at))[0] == marker:
            if found >= 0:
                return -1
            found = at
    return found


cdef Py_ssize_t install_members(type cls) except -1:
    """Puts member descriptors in place of ``cls``'s object-field properties (see the top); how many."""
    global MEMBERS, MEMBER_COUNT
    import types
    properties = [(name, descriptor) for name, descriptor in vars(cls).items()
                  if type(descriptor) is types.GetSetDescriptorType]
    cdef PyMemberDef* members = <PyMemberDef*>PyMem_Malloc(max(len(properties), 1) * sizeof(PyMemberDef))
    cdef Py_ssize_t n = 0, offset
    if members == NULL:
        raise MemoryError()
    names = []
    blank = cls.__new__(cls)  # every object field None (Cython's tp_new), no __init__
    for name, descriptor in properties:
        if descriptor.__get__(blank, cls) is not None:
            continue  # a C field
        marker = object()
        descriptor.__set__(blank, marker)
        offset = find_word(blank, <PyObject*>marker)
        descriptor.__set__(blank, None)
        if offset < 0:
            continue
        members[n].name = (<PyGetSetDescrObject*><PyObject*>descriptor).d_getset.name
        members[n].type = T_OBJECT_EX
        members[n].offset = offset
        members[n].flags = 0
        members[n].doc = NULL
        names.append(name)
        n += 1
    MEMBERS, MEMBER_COUNT = members, n  # before the descriptors: deleted() reads them
    for i, name in enumerate(names):
        PyDict_SetItem(<object>(<PyTypeObject*><PyObject*>cls).tp_dict, name,
                       PyDescr_NewMember(<PyTypeObject*><PyObject*>cls, &members[i]))
    PyType_Modified(<PyTypeObject*><PyObject*>cls)
    return n


install_members(RequestContext)
