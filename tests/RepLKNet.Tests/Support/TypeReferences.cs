using System.Buffers.Binary;
using System.Collections.Immutable;
using System.Reflection;
using System.Reflection.Emit;
using System.Reflection.Metadata;
using System.Reflection.Metadata.Ecma335;
using System.Reflection.PortableExecutable;

namespace RepLKNet.Tests.Support;

/// <summary>One use of a type declared in an assembly by another type declared in it, as its compiled metadata records it.</summary>
/// <param name="From">Where the use is: the using type's full name (nested types after <c>+</c>) and, after a dot, its member.</param>
/// <param name="FromNamespace">
/// The namespace of the top-level type that holds <paramref name="From"/>: a nested type (a closure, a lambda's cache, an
/// iterator's state machine) belongs to its enclosing type.
/// </param>
/// <param name="To">The used type's full name.</param>
/// <param name="ToNamespace">The namespace of the top-level type that holds <paramref name="To"/>.</param>
/// <param name="Via">
/// How: <c>base type</c>, <c>interface</c>, <c>constraint</c>, <c>attribute</c> (its constructor or a <c>typeof</c>
/// argument), <c>field</c>, <c>signature</c> (a method's parameters and return), <c>property</c>, <c>event</c>,
/// <c>local</c> (a local variable's type), <c>catch</c> (an exception clause) or <c>body</c> (a token in the IL: a
/// method, field or type it calls, reads, creates, casts to or names with <c>typeof</c>, with its generic arguments).
/// </param>
internal sealed record TypeReference(string From, string FromNamespace, string To, string ToNamespace, string Via)
{
    public override string ToString() => $"{From} -> {To} ({Via})";
}

/// <summary>
/// Reads, with System.Reflection.Metadata and without loading the assembly, every place where a type declared in an
/// assembly uses another type declared in the same assembly: base types, interfaces, generic constraints, custom
/// attributes (constructors and <c>typeof</c> arguments), fields, method signatures, properties, events, local variables,
/// exception clauses and the IL of every method body (TypeDef/TypeRef/TypeSpec, MethodDef/MemberRef/MethodSpec and field
/// tokens, generic arguments included). Types in other assemblies are not reported.
/// </summary>
internal static class TypeReferences
{
    /// <summary>Every distinct (from, to, via) use inside the assembly at <paramref name="assemblyPath"/>.</summary>
    public static IReadOnlyList<TypeReference> Read(string assemblyPath)
    {
        using var stream = File.OpenRead(assemblyPath);
        using var pe = new PEReader(stream);
        return new Reader(pe).Run();
    }

    private static readonly Dictionary<short, OpCode> Codes = typeof(OpCodes)
        .GetFields(BindingFlags.Public | BindingFlags.Static)
        .Select(f => (OpCode)f.GetValue(null)!)
        .ToDictionary(c => c.Value);

    /// <summary>
    /// The metadata tokens in a method body's IL, in order: the operands of the instructions that name a method, field,
    /// type, token or signature (string literals are not metadata). Walks the instructions with the ECMA-335 operand sizes.
    /// </summary>
    /// <exception cref="InvalidDataException">A byte is no opcode where one must start (the IL is damaged or the walk lost its place).</exception>
    internal static IEnumerable<int> IlTokens(byte[] il, string method)
    {
        int i = 0;
        while (i < il.Length)
        {
            int at = i;
            short value = il[i] == 0xFE && i + 1 < il.Length ? (short)(0xFE00 | il[++i]) : il[i];
            i++;
            if (!Codes.TryGetValue(value, out var code))
            {
                throw new InvalidDataException($"{method}: no IL opcode 0x{value:X} at IL offset {at}");
            }

            switch (code.OperandType)
            {
                case OperandType.InlineMethod:
                case OperandType.InlineField:
                case OperandType.InlineType:
                case OperandType.InlineTok:
                case OperandType.InlineSig:
                    yield return BinaryPrimitives.ReadInt32LittleEndian(il.AsSpan(i));
                    i += 4;
                    break;
                case OperandType.InlineSwitch:
                    i += 4 + (4 * BinaryPrimitives.ReadInt32LittleEndian(il.AsSpan(i))); // the count, then one target per case
                    break;
                case OperandType.InlineNone:
                    break;
                case OperandType.ShortInlineBrTarget:
                case OperandType.ShortInlineI:
                case OperandType.ShortInlineVar:
                    i += 1;
                    break;
                case OperandType.InlineVar:
                    i += 2;
                    break;
                case OperandType.InlineI8:
                case OperandType.InlineR:
                    i += 8;
                    break;
                default: // InlineBrTarget, InlineI, InlineString, ShortInlineR
                    i += 4;
                    break;
            }
        }
    }

    /// <summary>
    /// Decodes signatures into type names (so that custom attribute blobs, which need to recognize <c>System.Type</c> and
    /// enums, can be read), recording every type definition of the assembly it meets on the way.
    /// </summary>
    private sealed class Reader : ISignatureTypeProvider<string, object?>, ICustomAttributeTypeProvider<string>
    {
        private readonly PEReader _pe;
        private readonly MetadataReader _md;
        private readonly Dictionary<string, TypeDefinitionHandle> _byName = new(StringComparer.Ordinal);
        private readonly HashSet<TypeReference> _seen = [];
        private readonly List<TypeReference> _found = [];
        private string _from = "";
        private string _fromNamespace = "";
        private string _via = "";

        public Reader(PEReader pe)
        {
            _pe = pe;
            _md = pe.GetMetadataReader();
        }

        public List<TypeReference> Run()
        {
            foreach (var h in _md.TypeDefinitions)
            {
                _byName[FullName(h)] = h;
            }

            foreach (var h in _md.TypeDefinitions)
            {
                VisitType(h);
            }

            return _found;
        }

        private void At(string from, string fromNamespace, string via)
        {
            _from = from;
            _fromNamespace = fromNamespace;
            _via = via;
        }

        private void Via(string via) => _via = via;

        private void VisitType(TypeDefinitionHandle handle)
        {
            var type = _md.GetTypeDefinition(handle);
            string name = FullName(handle);
            string ns = OwnerNamespace(handle);

            At(name, ns, "base type");
            if (!type.BaseType.IsNil)
            {
                Entity(type.BaseType);
            }

            Via("interface");
            foreach (var i in type.GetInterfaceImplementations())
            {
                Entity(_md.GetInterfaceImplementation(i).Interface);
            }

            foreach (var i in type.GetMethodImplementations())
            {
                Entity(_md.GetMethodImplementation(i).MethodDeclaration);
            }

            Constraints(type.GetGenericParameters());
            Attributes(type.GetCustomAttributes());

            foreach (var f in type.GetFields())
            {
                var field = _md.GetFieldDefinition(f);
                At($"{name}.{_md.GetString(field.Name)}", ns, "field");
                field.DecodeSignature(this, null);
                Attributes(field.GetCustomAttributes());
            }

            foreach (var p in type.GetProperties())
            {
                var property = _md.GetPropertyDefinition(p);
                At($"{name}.{_md.GetString(property.Name)}", ns, "property");
                property.DecodeSignature(this, null);
                Attributes(property.GetCustomAttributes());
            }

            foreach (var e in type.GetEvents())
            {
                var ev = _md.GetEventDefinition(e);
                At($"{name}.{_md.GetString(ev.Name)}", ns, "event");
                Entity(ev.Type);
                Attributes(ev.GetCustomAttributes());
            }

            foreach (var m in type.GetMethods())
            {
                var method = _md.GetMethodDefinition(m);
                At($"{name}.{_md.GetString(method.Name)}", ns, "signature");
                method.DecodeSignature(this, null);
                Constraints(method.GetGenericParameters());
                Attributes(method.GetCustomAttributes());
                foreach (var p in method.GetParameters())
                {
                    Attributes(_md.GetParameter(p).GetCustomAttributes());
                }

                if (method.RelativeVirtualAddress != 0)
                {
                    Body(_pe.GetMethodBody(method.RelativeVirtualAddress));
                }
            }
        }

        private void Constraints(GenericParameterHandleCollection parameters)
        {
            foreach (var g in parameters)
            {
                var parameter = _md.GetGenericParameter(g);
                Via("constraint");
                foreach (var c in parameter.GetConstraints())
                {
                    Entity(_md.GetGenericParameterConstraint(c).Type);
                }

                Attributes(parameter.GetCustomAttributes());
            }
        }

        private void Attributes(CustomAttributeHandleCollection attributes)
        {
            string via = _via;
            Via("attribute");
            foreach (var a in attributes)
            {
                var attribute = _md.GetCustomAttribute(a);
                Entity(attribute.Constructor);
                try
                {
                    attribute.DecodeValue(this); // typeof(X) arguments reach GetTypeFromSerializedName
                }
                catch (BadImageFormatException)
                {
                    // An enum argument of another assembly whose underlying type is not int: its values are not types.
                }
            }

            Via(via);
        }

        private void Body(MethodBodyBlock body)
        {
            Via("local");
            if (!body.LocalSignature.IsNil)
            {
                Entity(body.LocalSignature);
            }

            Via("catch");
            foreach (var region in body.ExceptionRegions)
            {
                if (!region.CatchType.IsNil)
                {
                    Entity(region.CatchType);
                }
            }

            Via("body");
            foreach (int token in IlTokens(body.GetILBytes() ?? [], _from))
            {
                Entity(MetadataTokens.EntityHandle(token));
            }
        }

        /// <summary>Records the type definitions a metadata token names: the type itself, a member's declaring type, generic arguments.</summary>
        private void Entity(EntityHandle handle)
        {
            switch (handle.Kind)
            {
                case HandleKind.TypeDefinition:
                    Add((TypeDefinitionHandle)handle);
                    break;
                case HandleKind.TypeReference:
                    GetTypeFromReference(_md, (TypeReferenceHandle)handle, 0);
                    break;
                case HandleKind.TypeSpecification:
                    _md.GetTypeSpecification((TypeSpecificationHandle)handle).DecodeSignature(this, null);
                    break;
                case HandleKind.MethodDefinition:
                    Add(_md.GetMethodDefinition((MethodDefinitionHandle)handle).GetDeclaringType());
                    break;
                case HandleKind.FieldDefinition:
                    Add(_md.GetFieldDefinition((FieldDefinitionHandle)handle).GetDeclaringType());
                    break;
                case HandleKind.MemberReference:
                    var parent = _md.GetMemberReference((MemberReferenceHandle)handle).Parent;
                    if (parent.Kind != HandleKind.ModuleReference)
                    {
                        Entity(parent);
                    }

                    break;
                case HandleKind.MethodSpecification:
                    var spec = _md.GetMethodSpecification((MethodSpecificationHandle)handle);
                    Entity(spec.Method);
                    spec.DecodeSignature(this, null);
                    break;
                case HandleKind.StandaloneSignature:
                    var signature = _md.GetStandaloneSignature((StandaloneSignatureHandle)handle);
                    if (signature.GetKind() == StandaloneSignatureKind.Method)
                    {
                        signature.DecodeMethodSignature(this, null);
                    }
                    else
                    {
                        signature.DecodeLocalSignature(this, null);
                    }

                    break;
                default:
                    break;
            }
        }

        private void Add(TypeDefinitionHandle target)
        {
            var reference = new TypeReference(_from, _fromNamespace, FullName(target), OwnerNamespace(target), _via);
            if (_from.Length > 0 && _seen.Add(reference))
            {
                _found.Add(reference);
            }
        }

        private string FullName(TypeDefinitionHandle handle)
        {
            var type = _md.GetTypeDefinition(handle);
            string name = _md.GetString(type.Name);
            var declaring = type.GetDeclaringType();
            if (!declaring.IsNil)
            {
                return $"{FullName(declaring)}+{name}";
            }

            string ns = _md.GetString(type.Namespace);
            return ns.Length == 0 ? name : $"{ns}.{name}";
        }

        private string OwnerNamespace(TypeDefinitionHandle handle)
        {
            var type = _md.GetTypeDefinition(handle);
            while (!type.GetDeclaringType().IsNil)
            {
                type = _md.GetTypeDefinition(type.GetDeclaringType());
            }

            return _md.GetString(type.Namespace);
        }

        /// <summary>A type reference's full name, and whether it resolves to this module (C# emits a definition there instead, but IL may not).</summary>
        private (string Name, bool Local) ReferenceName(TypeReferenceHandle handle)
        {
            var reference = _md.GetTypeReference(handle);
            string name = _md.GetString(reference.Name);
            var scope = reference.ResolutionScope;
            if (scope.Kind == HandleKind.TypeReference)
            {
                var (outer, local) = ReferenceName((TypeReferenceHandle)scope);
                return ($"{outer}+{name}", local);
            }

            string ns = _md.GetString(reference.Namespace);
            return (ns.Length == 0 ? name : $"{ns}.{name}", scope.Kind == HandleKind.ModuleDefinition);
        }

        // ISignatureTypeProvider / ICustomAttributeTypeProvider: a type's name; definitions are recorded on the way.
        public string GetTypeFromDefinition(MetadataReader reader, TypeDefinitionHandle handle, byte rawTypeKind)
        {
            Add(handle);
            return FullName(handle);
        }

        public string GetTypeFromReference(MetadataReader reader, TypeReferenceHandle handle, byte rawTypeKind)
        {
            var (name, local) = ReferenceName(handle);
            if (local && _byName.TryGetValue(name, out var definition))
            {
                Add(definition);
            }

            return name;
        }

        public string GetTypeFromSpecification(MetadataReader reader, object? genericContext, TypeSpecificationHandle handle, byte rawTypeKind) =>
            _md.GetTypeSpecification(handle).DecodeSignature(this, genericContext);

        public string GetTypeFromSerializedName(string name)
        {
            // "Namespace.Outer+Inner`1[[…]], Assembly, Version=…": the type's own name ends at its generic arguments or assembly.
            int end = name.IndexOfAny(['[', ',']);
            string own = (end < 0 ? name : name[..end]).Trim();
            if (_byName.TryGetValue(own, out var definition))
            {
                Add(definition);
            }

            return own;
        }

        public PrimitiveTypeCode GetUnderlyingEnumType(string type)
        {
            if (_byName.TryGetValue(type, out var definition))
            {
                foreach (var f in _md.GetTypeDefinition(definition).GetFields())
                {
                    var field = _md.GetFieldDefinition(f);
                    if ((field.Attributes & FieldAttributes.Static) == 0)
                    {
                        var blob = _md.GetBlobReader(field.Signature);
                        blob.ReadSignatureHeader();
                        return (PrimitiveTypeCode)blob.ReadSignatureTypeCode();
                    }
                }
            }

            return PrimitiveTypeCode.Int32; // an enum of another assembly: nearly always int
        }

        public string GetSystemType() => "System.Type";

        public bool IsSystemType(string type) => type == "System.Type";

        public string GetPrimitiveType(PrimitiveTypeCode typeCode) => typeCode.ToString();

        public string GetArrayType(string elementType, ArrayShape shape) => $"{elementType}[{new string(',', shape.Rank - 1)}]";

        public string GetSZArrayType(string elementType) => $"{elementType}[]";

        public string GetByReferenceType(string elementType) => $"{elementType}&";

        public string GetPointerType(string elementType) => $"{elementType}*";

        public string GetPinnedType(string elementType) => elementType;

        public string GetModifiedType(string modifier, string unmodifiedType, bool isRequired) => unmodifiedType;

        public string GetFunctionPointerType(MethodSignature<string> signature) => "delegate*";

        public string GetGenericInstantiation(string genericType, ImmutableArray<string> typeArguments) =>
            $"{genericType}<{string.Join(", ", typeArguments)}>";

        public string GetGenericMethodParameter(object? genericContext, int index) => $"!!{index}";

        public string GetGenericTypeParameter(object? genericContext, int index) => $"!{index}";
    }
}
