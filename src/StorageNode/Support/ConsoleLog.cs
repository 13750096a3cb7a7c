using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Console;

namespace StorageNode.Support;

/// <summary>The log a node and a witness write: one line per entry on the console, with the time to the millisecond.</summary>
internal static class ConsoleLog
{
    public static ILoggerFactory Create() => LoggerFactory.Create(b => b
        .AddSimpleConsole(o =>
        {
            o.SingleLine = true;
            o.TimestampFormat = "HH:mm:ss.fff ";
            o.ColorBehavior = LoggerColorBehavior.Disabled;
        })
        .SetMinimumLevel(LogLevel.Information));
}
