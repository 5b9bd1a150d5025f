# cython: language_level=3
#
# Reading an object's __slots__ fields from C, by offset: the access log's reads of the exchange (a plain class
# of the server), in _logline.pyx (cimported, nothing compiled on its own).  The request context is not read
# this way: its fields are declared in _context.pxd.
#
# A class's __slots__ are member descriptors (a public CPython structure, PyMemberDescrObject) that hold each
# field's offset in the instance.  For a class, slot_offset finds that offset once; slot_value then reads the
# field with one load instead of a generic attribute lookup (a type lookup, a descriptor call: ~100 machine
# instructions).  It gives NULL for an unset slot, and slot_offset -1 for a field that is not a plain object
# slot (a property, an instance-dict attribute): the caller then uses getattr, which also raises what getattr
# raises.  An offset is valid only for instances of the class it was found on (callers check the exact type).

from cpython.object cimport PyObject

cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        int type
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member

cdef extern from "structmember.h":
    int T_OBJECT_EX


cdef inline Py_ssize_t slot_offset(type cls, str name) except -2:
    """The offset of ``cls``'s object slot ``name``, or -1."""
    cdef PyMemberDef* member
    import types  # here: a .pxd holds no module-level code (this runs once per class and field)
    descriptor = getattr(cls, name, None)
    if type(descriptor) is types.MemberDescriptorType:
        member = (<PyMemberDescrObject*><PyObject*>descriptor).d_member
        if member.type == T_OBJECT_EX:
            return member.offset
    return -1


cdef inline PyObject* slot_value(object instance, Py_ssize_t offset) noexcept:
    """The slot at ``offset`` (borrowed; NULL when unset or when ``offset`` is -1)."""
    if offset < 0:
        return NULL
    return (<PyObject**>((<char*><PyObject*>instance) + offset))[0]
