using System.Reflection;
using System.Reflection.Emit;

namespace RepLKNet.Tests.Support;

/// <summary>
/// Reads the methods a method's IL calls (<c>call</c>, <c>callvirt</c>, <c>newobj</c>, <c>ldftn</c>, <c>ldvirtftn</c>), by
/// decoding its IL bytes with the ECMA-335 operand sizes and resolving the tokens through reflection. Used by the
/// GC-safety tests to find TorchSharp calls that create a temporary <c>Scalar</c>.
/// </summary>
internal static class IlCalls
{
    private static readonly Dictionary<short, OpCode> Codes = typeof(OpCodes)
        .GetFields(BindingFlags.Public | BindingFlags.Static)
        .Select(f => (OpCode)f.GetValue(null)!)
        .ToDictionary(c => c.Value);

    /// <summary>Every method <paramref name="method"/>'s body calls, in IL order (unresolvable tokens are skipped).</summary>
    public static IEnumerable<MethodBase> Callees(MethodBase method)
    {
        byte[]? il;
        try
        {
            il = method.GetMethodBody()?.GetILAsByteArray();
        }
        catch (Exception e) when (e is InvalidOperationException or NotSupportedException or BadImageFormatException)
        {
            yield break;
        }

        if (il is null)
        {
            yield break;
        }

        Type[]? typeArgs = method.DeclaringType is { IsGenericType: true } t ? t.GetGenericArguments() : null;
        Type[]? methodArgs = method.IsGenericMethod ? method.GetGenericArguments() : null;
        int i = 0;
        while (i < il.Length)
        {
            short value = il[i] == 0xFE && i + 1 < il.Length ? (short)(0xFE00 | il[i + 1]) : il[i];
            if (!Codes.TryGetValue(value, out var code))
            {
                yield break; // not IL we understand: stop rather than misread operands
            }

            i += code.Size;
            int operand = code.OperandType switch
            {
                OperandType.InlineNone => 0,
                OperandType.ShortInlineBrTarget or OperandType.ShortInlineI or OperandType.ShortInlineVar => 1,
                OperandType.InlineVar => 2,
                OperandType.InlineI8 or OperandType.InlineR => 8,
                OperandType.InlineSwitch => 4 + (4 * BitConverter.ToInt32(il, i)),
                _ => 4,
            };
            if (code.OperandType == OperandType.InlineMethod)
            {
                MethodBase? callee = null;
                try
                {
                    callee = method.Module.ResolveMethod(BitConverter.ToInt32(il, i), typeArgs, methodArgs);
                }
                catch (Exception e) when (e is ArgumentException or BadImageFormatException or TypeLoadException or FileNotFoundException)
                {
                }

                if (callee is not null)
                {
                    yield return callee;
                }
            }

            i += operand;
        }
    }

    /// <summary>Every method and constructor with a body declared in <paramref name="assembly"/>, nested and compiler-generated types included.</summary>
    public static IEnumerable<MethodBase> MethodsOf(Assembly assembly)
    {
        const BindingFlags all = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;
        foreach (var type in assembly.GetTypes())
        {
            foreach (var m in type.GetMethods(all).Cast<MethodBase>().Concat(type.GetConstructors(all)))
            {
                yield return m;
            }
        }
    }

    /// <summary>A readable name: <c>Type::Method(ParamType, …)</c>.</summary>
    public static string Describe(MethodBase m) =>
        $"{m.DeclaringType?.Name}::{m.Name}({string.Join(", ", m.GetParameters().Select(p => p.ParameterType.Name))})";
}
