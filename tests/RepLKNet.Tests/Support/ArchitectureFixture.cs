// Two "folders" for ArchitectureTests' self-checks: Upper uses each Lower type through exactly one kind of reference (the
// type's name says which), and Lower.Back uses Upper once, closing a cycle the test must report.
#pragma warning disable CA1040, CA1032, CA1064, CA1019, CA1018, CA1034, CA1051, CA1812, CA1852, CA2211, CS0649, CS0169, IDE0044, IDE0051

namespace RepLKNet.Tests.ArchitectureFixture.Lower
{
    public class BaseClass;

    public interface IInterface;

    public interface IConstraint;

    [AttributeUsage(AttributeTargets.All)]
    public sealed class MarkerAttribute : Attribute;

    public sealed class TypeofArgument;

    public sealed class FieldType;

    public sealed class PropertyType;

    public sealed class ParameterType;

    public sealed class ReturnGenericArgument;

    public static class CalledInBody
    {
        public static int Value() => 1;
    }

    public static class CalledInLambda
    {
        public static int Value() => 2;
    }

    public static class CalledInIterator
    {
        public static int Value() => 3;
    }

    public static class CalledAfterSwitch
    {
        public static int Value() => 4;
    }

    public static class FieldHolder
    {
        public static int Field;
    }

    public sealed class CaughtException : Exception;

    public struct LocalOnly
    {
        public int X;
    }

    public sealed class TypeofInBody;

    public sealed class MethodGenericArgument;

    /// <summary>The one use of Upper from Lower: the fixture's cycle.</summary>
    public static class Back
    {
        public static int Up() => Upper.Channels.Value;
    }
}

namespace RepLKNet.Tests.ArchitectureFixture.Upper
{
    public class DerivesFrom : Lower.BaseClass;

    public sealed class ImplementsInterface : Lower.IInterface;

    public sealed class Constrained<T>
        where T : Lower.IConstraint;

    [Lower.Marker]
    public sealed class Attributed;

    [AttributeUsage(AttributeTargets.All)]
    public sealed class NamesAttribute(Type type) : Attribute
    {
        public Type Type { get; } = type;
    }

    [Names(typeof(Lower.TypeofArgument))]
    public sealed class NamesAType;

    public static class Channels
    {
        public static int Value;

        private static Lower.FieldType? _field;

        public static Lower.PropertyType? Property { get; set; }

        public static void Takes(Lower.ParameterType parameter) => GC.KeepAlive(parameter);

        public static List<Lower.ReturnGenericArgument> Returns() => [];

        public static int Calls() => Lower.CalledInBody.Value();

        public static Func<int> Lambda() => () => Lower.CalledInLambda.Value() + Value;

        public static IEnumerable<int> Iterator()
        {
            yield return Lower.CalledInIterator.Value();
        }

        public static int ReadsField() => Lower.FieldHolder.Field;

        // A jump table (IL switch, a variable-length operand) before the reference: the reader must keep its place.
        public static int AfterSwitch(int k)
        {
            switch (k)
            {
                case 0: return 10;
                case 1: return 11;
                case 2: return 12;
                case 3: return 13;
                case 4: return 14;
                default: break;
            }

            return Lower.CalledAfterSwitch.Value();
        }

        public static int Catches()
        {
            try
            {
                return Value / Value;
            }
            catch (Lower.CaughtException)
            {
                return 0;
            }
        }

        public static int Local()
        {
            Lower.LocalOnly local = default;
            local.X = Value;
            Value = local.X + 1;
            return local.X;
        }

        public static Type Token() => typeof(Lower.TypeofInBody);

        public static string Generic() => Name<Lower.MethodGenericArgument>();

        private static string Name<T>() => typeof(T).Name;
    }
}
